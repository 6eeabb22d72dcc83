//! Kubernetes `Status` errors, as the API server writes them.
//!
//! Every failure the fake answers is an [`ApiError`] rendered as a
//! `metav1.Status` body (`kind: Status`, `status: Failure`, `reason`, `code`,
//! `details`) with the matching HTTP status, so `kube` turns it into
//! `kube::Error::Api` exactly as it does for a real cluster. The rule it
//! keeps: **the reason and message texts are the API server's own**, because
//! client code matches on them.

use serde_json::{Value, json};

use super::managed_fields::Conflicts;
use super::resource::ResourceType;

/// A failed request, rendered as a Kubernetes `Status`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// The Status's `metadata` (a fresh continue token, for an expired
    /// one); boxed, as it is rare and errors travel in every `Result`.
    pub metadata: Option<Box<Value>>,
    /// `Retry-After` seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
            metadata: None,
            retry_after: None,
        }
    }

    fn with_object(mut self, t: &ResourceType, name: &str) -> Self {
        self.details = Some(details(t, name));
        self
    }

    /// 404 for an object that does not exist.
    pub fn not_found(t: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", t.qualified_plural()),
        )
        .with_object(t, name)
    }

    /// 404 for a path the server does not serve.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 409 AlreadyExists on create.
    pub fn already_exists(t: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", t.qualified_plural()),
        )
        .with_object(t, name)
    }

    /// 409 Conflict for a stale `resourceVersion` (the optimistic-concurrency
    /// failure every compare-and-swap loop retries on).
    pub fn conflict(t: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                t.qualified_plural()
            ),
        )
        .with_object(t, name)
    }

    /// 409 Conflict for a failed delete or update precondition.
    pub fn precondition_failed(t: &ResourceType, name: &str, what: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: {what}",
                t.qualified_plural()
            ),
        )
        .with_object(t, name)
    }

    /// 409 Conflict for a server-side apply that would change fields other
    /// managers own, with one `FieldManagerConflict` cause per field (the
    /// API server's `NewApplyConflict`: no object in `details`).
    pub fn apply_conflict(conflicts: &Conflicts) -> Self {
        let mut err = Self::new(409, "Conflict", conflicts.message());
        let causes: Vec<Value> = conflicts
            .items
            .iter()
            .map(|(manager, field)| {
                json!({
                    "type": "FieldManagerConflict",
                    "message": format!("conflict with {manager}"),
                    "field": field,
                })
            })
            .collect();
        err.details = Some(json!({ "causes": causes }));
        err
    }

    /// 422 Invalid for a bad query parameter of a write
    /// (`kind`: `CreateOptions`, `UpdateOptions`, `PatchOptions`).
    pub fn invalid_options(kind: &str, field: &str, why: &str) -> Self {
        let mut err = Self::new(
            422,
            "Invalid",
            format!("{kind}.meta.k8s.io \"\" is invalid: {field}: {why}"),
        );
        err.details = Some(json!({
            "group": "meta.k8s.io",
            "kind": kind,
            "causes": [{"reason": cause_reason(why), "message": why, "field": field}],
        }));
        err
    }

    /// 422 Invalid for an object that breaks a validation rule.
    pub fn invalid(t: &ResourceType, name: &str, field: &str, why: &str) -> Self {
        let mut err = Self::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {field}: {why}", t.kind),
        );
        err.details = Some(json!({
            "name": name,
            "group": t.group,
            "kind": t.kind,
            "causes": [{"reason": "FieldValueInvalid", "message": why, "field": field}],
        }));
        err
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource: {method}"),
        )
    }

    /// 410 Expired: a watch or list from a resourceVersion older than the
    /// kept history.
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// 410 for a LIST continuation whose snapshot was compacted, carrying
    /// a token (`continue`) that goes on from the same place in the latest
    /// state, as etcd3's storage answers.
    pub fn continue_expired(latest: &str) -> Self {
        let mut err = Self::new(
            410,
            "Expired",
            "The provided continue parameter is too old to display a consistent list result. \
             You can start a new list without the continue parameter, or use the continue token \
             in this response to retrieve the remainder of the results. Continuing with the \
             provided token results in an inconsistent list - objects that were created, \
             modified, or deleted between the time the first chunk was returned and now may \
             show up in the list.",
        );
        err.metadata = Some(Box::new(json!({"continue": latest})));
        err
    }

    /// 504 for a read at a resourceVersion the server has not reached.
    pub fn too_large_resource_version(asked: u64, current: u64) -> Self {
        let mut err = Self::new(
            504,
            "Timeout",
            format!("Timeout: Too large resource version: {asked}, current: {current}"),
        );
        err.details = Some(json!({
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        }));
        err.retry_after = Some(1);
        err
    }

    /// 422 for invalid `ListOptions` (one entry per failed rule: field and
    /// what is wrong, `Forbidden: …` or `Unsupported value: …`).
    pub fn invalid_list_options(errors: &[(&str, String)]) -> Self {
        let each: Vec<String> = errors
            .iter()
            .map(|(f, why)| format!("{f}: {why}"))
            .collect();
        let all = match each.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let mut err = Self::new(
            422,
            "Invalid",
            format!("ListOptions.meta.k8s.io \"\" is invalid: {all}"),
        );
        let causes: Vec<Value> = errors
            .iter()
            .map(|(f, why)| json!({"reason": cause_reason(why), "message": why, "field": f}))
            .collect();
        err.details =
            Some(json!({"group": "meta.k8s.io", "kind": "ListOptions", "causes": causes}));
        err
    }

    /// 413 for a body over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    /// 415 for a patch content type the resource does not accept
    /// (`accepted`, in the API server's order).
    pub fn unsupported_media_type(accepted: &[&str]) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
    }

    /// The same error as the API server words it for `to`, a resource
    /// served from the storage of `from` (events.k8s.io over core Events):
    /// names and details name the resource the client asked for.
    pub fn requalified(mut self, from: &ResourceType, to: &ResourceType) -> Self {
        let from_name = format!("{} \"", from.qualified_plural());
        if let Some(rest) = self.message.strip_prefix(&from_name) {
            self.message = format!("{} \"{rest}", to.qualified_plural());
        }
        if let Some(group) = self.details.as_mut().and_then(|d| d.get_mut("group")) {
            *group = json!(to.group);
        }
        self
    }

    /// An error injected by fault injection (500, 503, 429, …), with the
    /// reason the real server uses for that code.
    pub fn injected(code: u16, retry_after: Option<u64>) -> Self {
        let (reason, message) = match code {
            429 => (
                "TooManyRequests",
                "Too many requests, please try again later.",
            ),
            500 => ("InternalError", "Internal error occurred: injected fault"),
            503 => (
                "ServiceUnavailable",
                "The server is currently unable to handle the request",
            ),
            504 => (
                "Timeout",
                "The server was unable to return a response in the time allotted",
            ),
            409 => (
                "Conflict",
                "Operation cannot be fulfilled: injected conflict",
            ),
            404 => (
                "NotFound",
                "the server could not find the requested resource",
            ),
            _ => ("InternalError", "injected fault"),
        };
        let mut err = Self::new(code, reason, message);
        err.retry_after = retry_after;
        if let Some(secs) = retry_after {
            err.details = Some(json!({"retryAfterSeconds": secs}));
        }
        err
    }

    /// The `Status` body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": self.metadata.as_deref().cloned().unwrap_or_else(|| json!({})),
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

/// The `FieldValue…` cause reason for a validation message.
fn cause_reason(why: &str) -> &'static str {
    if why.starts_with("Required value") {
        "FieldValueRequired"
    } else if why.starts_with("Forbidden") {
        "FieldValueForbidden"
    } else if why.starts_with("Too long") {
        "FieldValueTooLong"
    } else if why.starts_with("Unsupported value") {
        "FieldValueNotSupported"
    } else {
        "FieldValueInvalid"
    }
}

/// `details` naming one object, as the API server fills it.
pub(crate) fn details(t: &ResourceType, name: &str) -> Value {
    json!({"name": name, "group": t.group, "kind": t.plural})
}

/// The `Status` answered for a delete that removed the object at once.
pub(crate) fn success(t: &ResourceType, name: &str, uid: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": t.group, "kind": t.plural, "uid": uid},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_status_has_the_api_server_shape() {
        let t = ResourceType::new("coordination.k8s.io", "v1", "leases", "Lease", true);
        let s = ApiError::conflict(&t, "l1").to_status();
        assert_eq!(s["kind"], "Status");
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "Conflict");
        assert_eq!(s["code"], 409);
        assert_eq!(s["details"]["kind"], "leases");
        assert!(
            s["message"]
                .as_str()
                .unwrap()
                .starts_with("Operation cannot be fulfilled on leases.coordination.k8s.io \"l1\"")
        );
    }

    #[test]
    fn injected_429_carries_retry_after() {
        let e = ApiError::injected(429, Some(3));
        assert_eq!(e.reason, "TooManyRequests");
        assert_eq!(e.to_status()["details"]["retryAfterSeconds"], 3);
    }
}
