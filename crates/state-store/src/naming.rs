//! Task ids, object names, labels and annotation keys.
//!
//! The rule it keeps: a task id is checked before it reaches any name, label
//! or selector, so no input can address another object or widen a selector.

use std::collections::BTreeMap;

use crate::{Error, Result};

/// Label every state document carries: `app=remediation-state`.
pub const LABEL_APP: (&str, &str) = ("app", "remediation-state");
/// Label every state document carries: `managed-by=supersede`.
pub const LABEL_MANAGED_BY: (&str, &str) = ("managed-by", "supersede");
/// Label key holding the task id.
pub const LABEL_TASK_ID: &str = "task-id";
/// Annotation holding the document's schema version.
pub const ANNOTATION_SCHEMA_VERSION: &str = "supersede.dev/schema-version";
/// Annotation holding when a corrupt payload was quarantined (RFC 3339).
pub const ANNOTATION_QUARANTINED_AT: &str = "supersede.dev/quarantined-at";
/// Annotation holding why a payload was quarantined.
pub const ANNOTATION_QUARANTINE_REASON: &str = "supersede.dev/quarantine-reason";
/// Annotation holding the size in bytes of a quarantined payload whose kept
/// copy had to be truncated (absent when the copy is whole).
pub const ANNOTATION_QUARANTINE_ORIGINAL_BYTES: &str = "supersede.dev/quarantine-original-bytes";
/// Annotation mirroring the state's `last_update` (RFC 3339), written with
/// every write so that TTL cleanup can judge age from a metadata-only LIST.
/// Never read as the truth: a candidate is always re-read whole.
pub const ANNOTATION_LAST_UPDATE: &str = "supersede.dev/last-update";
/// Annotation mirroring the state's status (`InProgress`, …), as
/// [`ANNOTATION_LAST_UPDATE`].
pub const ANNOTATION_STATUS: &str = "supersede.dev/status";
/// Annotation present (`"true"`) while the state has an unfinished operation
/// journal, as [`ANNOTATION_LAST_UPDATE`].
pub const ANNOTATION_OPERATION_ACTIVE: &str = "supersede.dev/operation-active";
/// `data` key of the plain JSON state.
pub const KEY_STATE: &str = "state.json";
/// Flat `data` keys written beside the payload on every write, as the
/// starting design writes them, so `kubectl get cm task-42-state -o
/// jsonpath='{.data.iteration}'` answers. Derived from the payload, never
/// read as the truth.
pub const KEY_FLAT_TASK_ID: &str = "task_id";
/// See [`KEY_FLAT_TASK_ID`]: the iteration counter.
pub const KEY_FLAT_ITERATION: &str = "iteration";
/// See [`KEY_FLAT_TASK_ID`]: when the state was last written (RFC 3339).
pub const KEY_FLAT_LAST_UPDATE: &str = "last_update";
/// See [`KEY_FLAT_TASK_ID`]: the status (`InProgress`, …).
pub const KEY_FLAT_STATUS: &str = "status";

/// The flat `data` key of when iteration `n` started
/// (`iteration_<n>_started`, RFC 3339), as the starting design writes it.
pub fn iteration_started_key(n: u32) -> String {
    format!("iteration_{n}_started")
}

/// Whether `key` is an `iteration_<n>_started` key.
pub(crate) fn is_iteration_started_key(key: &str) -> bool {
    key.strip_prefix("iteration_")
        .and_then(|rest| rest.strip_suffix("_started"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `binaryData` key of the gzip-compressed JSON state.
pub const KEY_STATE_GZIP: &str = "state.json.gz";
/// `data` key of a quarantined (unparsable) JSON payload.
pub const KEY_STATE_CORRUPT: &str = "state.json.corrupt";
/// `binaryData` key of a quarantined (undecompressable) gzip payload.
pub const KEY_STATE_GZIP_CORRUPT: &str = "state.json.gz.corrupt";

/// Checks that `task_id` can be a label value and part of a resource name:
/// 1–63 characters of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn validate_task_id(task_id: &str) -> Result<()> {
    let reason = if task_id.is_empty() {
        Some("must not be empty")
    } else if task_id.len() > 63 {
        Some("must be at most 63 characters")
    } else if !task_id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("may contain only lowercase letters, digits and '-'")
    } else if task_id.starts_with('-') || task_id.ends_with('-') {
        Some("must start and end with a letter or digit")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidTaskId {
            id: task_id.chars().take(80).collect(),
            reason,
        }),
    }
}

/// The object name of a task's state: `task-<id>-state`.
pub fn state_name(task_id: &str) -> Result<String> {
    validate_task_id(task_id)?;
    Ok(format!("task-{task_id}-state"))
}

/// The labels selecting every state document.
pub fn state_selector() -> BTreeMap<String, String> {
    [LABEL_APP, LABEL_MANAGED_BY]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The labels of one task's state document.
pub fn state_labels(task_id: &str) -> BTreeMap<String, String> {
    let mut labels = state_selector();
    labels.insert(LABEL_TASK_ID.to_owned(), task_id.to_owned());
    labels
}

/// Checks that every pair of `labels` is a plain label key and value, so a
/// selector built from them selects exactly those labels.
pub fn validate_selector(labels: &BTreeMap<String, String>) -> Result<()> {
    let plain = |s: &str, extra: &[u8]| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b) || extra.contains(&b))
    };
    for (key, value) in labels {
        let reason = if key.is_empty() || key.len() > 253 || !plain(key, b"/") {
            Some(format!("label key {key:?} is not a plain label key"))
        } else if value.len() > 63 || !plain(value, b"") {
            Some(format!(
                "label value {value:?} of {key:?} is not a plain label value"
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(Error::InvalidSelector { reason });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_that_could_inject_into_names_or_selectors_are_rejected() {
        for bad in [
            "",
            "Task",
            "a/b",
            "a,b=c",
            "../x",
            "-a",
            "a-",
            "a.b",
            "a b",
            "ä",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(validate_task_id(bad), Err(Error::InvalidTaskId { .. })),
                "{bad:?} accepted"
            );
        }
        for good in ["a", "42", "pr-1234-quality", &"a".repeat(63)] {
            validate_task_id(good).unwrap();
        }
        assert_eq!(state_name("42").unwrap(), "task-42-state");
    }

    #[test]
    fn selectors_that_could_widen_a_list_are_rejected() {
        let sel = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        validate_selector(&sel("supersede.dev/stage", "quality-1")).unwrap();
        for (k, v) in [
            ("a", "b,c=d"),
            ("a", "x y"),
            ("a!", "b"),
            ("", "b"),
            ("a", "b)"),
        ] {
            assert!(matches!(
                validate_selector(&sel(k, v)),
                Err(Error::InvalidSelector { .. })
            ));
        }
    }
}
