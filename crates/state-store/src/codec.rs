//! Turning a `RemediationState` into a ConfigMap-shaped document and back:
//! size management (compaction, gzip), schema migration, and quarantine of
//! payloads that cannot be read.
//!
//! The rule it keeps: decoding never fails. Whatever is stored becomes a state
//! plus an honest [`SchemaOrigin`] saying how it was obtained; only the write
//! path decides what may be written back.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value;
use tracing::warn;

use crate::backend::{Document, StoredDocument};
use crate::naming::{
    ANNOTATION_LAST_UPDATE, ANNOTATION_OPERATION_ACTIVE, ANNOTATION_QUARANTINE_ORIGINAL_BYTES,
    ANNOTATION_QUARANTINE_REASON, ANNOTATION_QUARANTINED_AT, ANNOTATION_SCHEMA_VERSION,
    ANNOTATION_STATUS, KEY_STATE, KEY_STATE_CORRUPT, KEY_STATE_GZIP, KEY_STATE_GZIP_CORRUPT,
    LABEL_TASK_ID, state_labels,
};
use crate::schema::{FeedbackEntry, RemediationState, SCHEMA_VERSION, Severity, TaskStatus};
use crate::{CompactionRecord, Error, Result};

/// Size thresholds for stored documents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeLimits {
    /// Above this encoded size, feedback is compacted, then the payload gzipped.
    pub compact_above: usize,
    /// Largest encoded size ever written; above it the write fails with `TooLarge`.
    pub max_document: usize,
    /// How many of the most recent feedback entries compaction keeps.
    pub keep_recent_feedback: usize,
}

impl Default for SizeLimits {
    fn default() -> Self {
        Self {
            // 768 KiB leaves room for the next few writes to grow before the hard limit.
            compact_above: 768 * 1024,
            // The API server allows 1 MiB of data; our estimate already counts JSON
            // escaping and base64, and we keep ~48 KiB spare for metadata we do not
            // see (managedFields).
            max_document: 1_000_000,
            keep_recent_feedback: 15,
        }
    }
}

/// How a state read from storage was obtained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SchemaOrigin {
    /// Stored in the current schema.
    Current,
    /// Stored in an older schema and migrated on read (written back as `v1`
    /// on the next update).
    Migrated {
        /// The stored version.
        from: String,
    },
    /// Stored by a newer build: read best-effort, never overwritten by us.
    Newer {
        /// The stored version.
        version: String,
    },
    /// Valid JSON of a schema this build knows that it cannot decode into its
    /// types — most likely written by a newer build (a `TaskStatus` or
    /// `Severity` added later): read best-effort from the top-level fields
    /// that decode, and never overwritten by this build (updates fail with
    /// `Undecodable`), as a newer schema version is not.
    Undecodable {
        /// Why it did not decode.
        reason: String,
    },
    /// The payload could not be read; the state was rebuilt from what survived
    /// and the next update quarantines the raw payload.
    Rebuilt {
        /// Why the payload could not be read.
        reason: String,
    },
}

/// The outcome of encoding a state.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub document: Document,
    pub size: usize,
    pub compaction: Option<CompactionRecord>,
    pub compressed: bool,
}

/// A payload to quarantine on the next write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CorruptPayload {
    Text(String),
    Binary(Vec<u8>),
    Missing,
}

/// The outcome of decoding a stored document.
#[derive(Clone, Debug)]
pub(crate) struct Decoded {
    pub state: RemediationState,
    pub origin: SchemaOrigin,
    pub corrupt: Option<CorruptPayload>,
}

/// Largest quarantined payload kept; a longer one is truncated so the
/// quarantine copy cannot make the document unwritable.
const MAX_QUARANTINE_BYTES: usize = 256 * 1024;
/// Largest decompressed payload read (guards against gzip bombs).
const MAX_DECOMPRESSED_BYTES: u64 = 16 * 1024 * 1024;
/// Metadata the server adds that we do not see (uid, timestamps, managedFields…).
const METADATA_OVERHEAD: usize = 2048;

/// Encodes `state` for `name`, keeping foreign labels and annotations and any
/// earlier quarantine copy of `previous`, adding `quarantine` if given.
pub(crate) fn encode(
    state: &mut RemediationState,
    name: &str,
    previous: Option<&Document>,
    quarantine: Option<(&CorruptPayload, &str)>,
    limits: &SizeLimits,
    now: Timestamp,
) -> Result<Encoded> {
    let mut document = previous.cloned().unwrap_or_default();
    document.labels.extend(state_labels(&state.task_id));
    document.annotations.insert(
        ANNOTATION_SCHEMA_VERSION.to_owned(),
        SCHEMA_VERSION.to_owned(),
    );
    mirror_in_annotations(state, &mut document.annotations);
    flat_keys(state, &mut document.data);
    if let Some((payload, reason)) = quarantine {
        let original = match payload {
            CorruptPayload::Text(raw) => {
                let mut kept = raw.clone();
                crate::journal::truncate_utf8(&mut kept, MAX_QUARANTINE_BYTES);
                document.data.insert(KEY_STATE_CORRUPT.to_owned(), kept);
                raw.len()
            }
            CorruptPayload::Binary(raw) => {
                let keep = raw.len().min(MAX_QUARANTINE_BYTES);
                document
                    .binary_data
                    .insert(KEY_STATE_GZIP_CORRUPT.to_owned(), raw[..keep].to_vec());
                raw.len()
            }
            CorruptPayload::Missing => 0,
        };
        if original > MAX_QUARANTINE_BYTES {
            // Said where the copy is, so nobody mistakes it for the whole payload.
            warn!(
                task_id = %state.task_id,
                original,
                kept = MAX_QUARANTINE_BYTES,
                "quarantined payload too large to keep whole; its copy is truncated"
            );
            document.annotations.insert(
                ANNOTATION_QUARANTINE_ORIGINAL_BYTES.to_owned(),
                original.to_string(),
            );
        } else {
            document
                .annotations
                .remove(ANNOTATION_QUARANTINE_ORIGINAL_BYTES);
        }
        document
            .annotations
            .insert(ANNOTATION_QUARANTINED_AT.to_owned(), now.to_string());
        document.annotations.insert(
            ANNOTATION_QUARANTINE_REASON.to_owned(),
            reason.chars().take(256).collect(),
        );
    }

    let json = to_json(state)?;
    document.binary_data.remove(KEY_STATE_GZIP);
    document.data.insert(KEY_STATE.to_owned(), json);
    let mut size = encoded_size(name, &document);
    let mut compaction = None;
    if size > limits.compact_above {
        compaction = state.compact_feedback(limits.keep_recent_feedback, now);
        if compaction.is_some() {
            document.data.insert(KEY_STATE.to_owned(), to_json(state)?);
            size = encoded_size(name, &document);
        }
    }
    let mut compressed = false;
    if size > limits.compact_above {
        let json = document.data.remove(KEY_STATE).unwrap_or_default();
        document.binary_data.insert(
            KEY_STATE_GZIP.to_owned(),
            gzip(json.as_bytes(), &state.task_id)?,
        );
        size = encoded_size(name, &document);
        compressed = true;
    }
    if size > limits.max_document {
        return Err(Error::TooLarge {
            task_id: state.task_id.clone(),
            size,
            limit: limits.max_document,
        });
    }
    Ok(Encoded {
        document,
        size,
        compaction,
        compressed,
    })
}

/// Writes the parts of `state` that scans of metadata alone need (age,
/// status, work in flight) into `annotations`.
fn mirror_in_annotations(state: &RemediationState, annotations: &mut BTreeMap<String, String>) {
    annotations.insert(
        ANNOTATION_LAST_UPDATE.to_owned(),
        state.last_update.to_string(),
    );
    annotations.insert(
        ANNOTATION_STATUS.to_owned(),
        state.status.as_str().to_owned(),
    );
    if state
        .active_operation
        .as_ref()
        .is_some_and(|j| !j.is_finished())
    {
        annotations.insert(ANNOTATION_OPERATION_ACTIVE.to_owned(), "true".to_owned());
    } else {
        annotations.remove(ANNOTATION_OPERATION_ACTIVE);
    }
}

/// Writes the flat `data` keys kubectl users and the starting design's
/// tools read (see [`KEY_FLAT_TASK_ID`](crate::naming::KEY_FLAT_TASK_ID)),
/// and drops `iteration_<n>_started` keys the state no longer records.
fn flat_keys(state: &RemediationState, data: &mut BTreeMap<String, String>) {
    use crate::naming::{
        KEY_FLAT_ITERATION, KEY_FLAT_LAST_UPDATE, KEY_FLAT_STATUS, KEY_FLAT_TASK_ID,
        is_iteration_started_key, iteration_started_key,
    };
    data.insert(KEY_FLAT_TASK_ID.to_owned(), state.task_id.clone());
    data.insert(KEY_FLAT_ITERATION.to_owned(), state.iteration.to_string());
    data.insert(
        KEY_FLAT_LAST_UPDATE.to_owned(),
        state.last_update.to_string(),
    );
    data.insert(KEY_FLAT_STATUS.to_owned(), state.status.as_str().to_owned());
    data.retain(|key, _| !is_iteration_started_key(key));
    for (n, at) in &state.iteration_started {
        data.insert(iteration_started_key(*n), at.to_string());
    }
}

/// Decodes a stored document of `task_id`. Never fails: see [`SchemaOrigin`].
pub(crate) fn decode(task_id: &str, max_iterations: u32, stored: &StoredDocument) -> Decoded {
    let doc = &stored.document;
    let payload = if let Some(gz) = doc.binary_data.get(KEY_STATE_GZIP) {
        match gunzip(gz) {
            Ok(text) => Ok(text),
            Err(reason) => Err((CorruptPayload::Binary(gz.clone()), reason)),
        }
    } else if let Some(text) = doc.data.get(KEY_STATE) {
        Ok(text.clone())
    } else {
        Err((CorruptPayload::Missing, "no state payload".to_owned()))
    };
    let text = match payload {
        Ok(text) => text,
        Err((corrupt, reason)) => {
            return rebuilt(task_id, max_iterations, doc, "", corrupt, reason);
        }
    };
    let unreadable = |reason: String| {
        let corrupt = CorruptPayload::Text(text.clone());
        rebuilt(task_id, max_iterations, doc, &text, corrupt, reason)
    };
    // Valid JSON is never corruption: whoever wrote it knew what it meant.
    let undecodable = |reason: String| Decoded {
        state: salvage(task_id, max_iterations, doc, &text),
        origin: SchemaOrigin::Undecodable { reason },
        corrupt: None,
    };
    let value: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => return unreadable(format!("unparsable JSON: {e}")),
    };
    let version = value
        .get("version")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| doc.annotations.get(ANNOTATION_SCHEMA_VERSION).cloned());
    let newer_annotation = doc
        .annotations
        .get(ANNOTATION_SCHEMA_VERSION)
        .is_some_and(|v| is_newer(v));
    match version.as_deref() {
        Some(v) if v == SCHEMA_VERSION && !newer_annotation => {
            match serde_json::from_value::<RemediationState>(value) {
                Ok(state) => Decoded {
                    state,
                    origin: SchemaOrigin::Current,
                    corrupt: None,
                },
                Err(e) => undecodable(format!("not a v1 state this build can decode: {e}")),
            }
        }
        None | Some("v0") if !newer_annotation => match serde_json::from_value::<StateV0>(value) {
            Ok(old) => Decoded {
                state: old.migrate(),
                origin: SchemaOrigin::Migrated {
                    from: "v0".to_owned(),
                },
                corrupt: None,
            },
            Err(e) => undecodable(format!("not a v0 state this build can decode: {e}")),
        },
        other => {
            // A version we do not know is treated as newer: reading it best-effort is
            // harmless, overwriting it could destroy fields we do not understand.
            let version = if newer_annotation {
                doc.annotations
                    .get(ANNOTATION_SCHEMA_VERSION)
                    .cloned()
                    .unwrap_or_default()
            } else {
                other.unwrap_or_default().to_owned()
            };
            let state = serde_json::from_value::<RemediationState>(value)
                .unwrap_or_else(|_| salvage(task_id, max_iterations, doc, &text));
            Decoded {
                state,
                origin: SchemaOrigin::Newer { version },
                corrupt: None,
            }
        }
    }
}

/// Our estimate of a document's size as the API server stores it: names,
/// labels and annotations, data values as JSON-escaped strings, binary data as
/// base64, plus a fixed allowance for server-side metadata. Always at least the
/// size the server counts against its 1 MiB limit.
pub fn encoded_size(name: &str, document: &Document) -> usize {
    let pairs = |m: &BTreeMap<String, String>| -> usize {
        m.iter().map(|(k, v)| k.len() + escaped_len(v) + 6).sum()
    };
    let binary: usize = document
        .binary_data
        .iter()
        .map(|(k, v)| k.len() + v.len().div_ceil(3) * 4 + 6)
        .sum();
    METADATA_OVERHEAD
        + name.len()
        + pairs(&document.labels)
        + pairs(&document.annotations)
        + pairs(&document.data)
        + binary
}

/// Whether `version` is a schema version newer than (or unknown to) this build.
pub(crate) fn is_newer(version: &str) -> bool {
    match version
        .strip_prefix('v')
        .and_then(|n| n.parse::<u32>().ok())
    {
        Some(n) => n > 1,
        None => true,
    }
}

fn to_json(state: &RemediationState) -> Result<String> {
    serde_json::to_string(state).map_err(|e| Error::Encode {
        task_id: state.task_id.clone(),
        message: e.to_string(),
    })
}

fn gzip(bytes: &[u8], task_id: &str) -> Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder
        .write_all(bytes)
        .and_then(|()| encoder.finish())
        .map_err(|e| Error::Encode {
            task_id: task_id.to_owned(),
            message: format!("gzip: {e}"),
        })
}

fn gunzip(bytes: &[u8]) -> std::result::Result<String, String> {
    let mut text = String::new();
    let mut reader = flate2::read::GzDecoder::new(bytes).take(MAX_DECOMPRESSED_BYTES + 1);
    reader
        .read_to_string(&mut text)
        .map_err(|e| format!("undecompressable gzip payload: {e}"))?;
    if text.len() as u64 > MAX_DECOMPRESSED_BYTES {
        return Err(format!(
            "gzip payload decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes"
        ));
    }
    Ok(text)
}

fn escaped_len(s: &str) -> usize {
    s.len()
        + s.bytes()
            .map(|b| match b {
                b'"' | b'\\' | b'\n' | b'\r' | b'\t' => 1,
                b if b < 0x20 => 5,
                _ => 0,
            })
            .sum::<usize>()
        + 2
}

fn rebuilt(
    task_id: &str,
    max_iterations: u32,
    doc: &Document,
    text: &str,
    corrupt: CorruptPayload,
    reason: String,
) -> Decoded {
    Decoded {
        state: salvage(task_id, max_iterations, doc, text),
        origin: SchemaOrigin::Rebuilt { reason },
        corrupt: Some(corrupt),
    }
}

/// Rebuilds a state from what survives of an unreadable payload: the task id
/// from the label, and each known top-level key whose value still parses and
/// keeps the state valid.
fn salvage(task_id: &str, max_iterations: u32, doc: &Document, text: &str) -> RemediationState {
    let id = doc
        .labels
        .get(LABEL_TASK_ID)
        .filter(|id| id.as_str() == task_id)
        .cloned()
        .unwrap_or_else(|| task_id.to_owned());
    let last_update =
        salvage_key::<Timestamp>(text, "last_update").unwrap_or(Timestamp::UNIX_EPOCH);
    let mut state = RemediationState::new(id, last_update);
    // The journal goes before the status: if only one of them can be kept (a
    // final status with an operation in flight), keep what recovery needs.
    let s = &mut state;
    let max = max_iterations;
    keep(s, max, text, "iteration", |s, n: u32| {
        s.iteration = n.min(max)
    });
    keep(s, max, text, "active_operation", |s, j| {
        s.active_operation = Some(j)
    });
    keep(s, max, text, "status", |s, v| s.status = v);
    keep(s, max, text, "metadata", |s, v| s.metadata = v);
    keep(s, max, text, "latest_head", |s, v| s.latest_head = Some(v));
    keep(s, max, text, "pending_supersessions", |s, v| {
        s.pending_supersessions = v
    });
    keep(s, max, text, "feedback_history", |s, v| {
        s.feedback_history = v
    });
    keep(s, max, text, "error_messages", |s, v| s.error_messages = v);
    keep(s, max, text, "cancellation_history", |s, v| {
        s.cancellation_history = v
    });
    keep(s, max, text, "compactions", |s, v| s.compactions = v);
    // The remembered deliveries keep a redelivery from counting twice.
    keep(s, max, text, "recent_deliveries", |s, v| {
        s.recent_deliveries = v
    });
    keep(s, max, text, "highest_fencing_token", |s, v| {
        s.highest_fencing_token = Some(v)
    });
    // The write log lets a writer whose answer was lost still settle it.
    keep(s, max, text, "applied_writes", |s, ids: Vec<String>| {
        for id in ids {
            s.remember_write(&id);
        }
    });
    state
}

/// Sets the part of `state` stored under `key` in `text`, if it still parses
/// and the state stays valid with it, so a rebuilt state can always be
/// written back.
fn keep<T: serde::de::DeserializeOwned>(
    state: &mut RemediationState,
    max_iterations: u32,
    text: &str,
    key: &str,
    set: impl FnOnce(&mut RemediationState, T),
) {
    let Some(value) = salvage_key::<T>(text, key) else {
        return;
    };
    let mut candidate = state.clone();
    set(&mut candidate, value);
    if candidate.validate(&state.task_id, max_iterations).is_ok() {
        *state = candidate;
    }
}

/// The value of the top-level `"key": <value>` of the JSON object in `text`
/// that parses as `T`. Only the outermost object's own keys count — a
/// journal step's `"status"` is not the task's — and `text` may be cut off or
/// broken after the value: the scan tracks strings and nesting itself
/// instead of parsing the whole text.
fn salvage_key<T: serde::de::DeserializeOwned>(text: &str, key: &str) -> Option<T> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => {
                let end = string_end(bytes, i)?;
                // A key of the outermost object: a string at depth 1 followed by ':'.
                let rest = text[end..].trim_start();
                if depth == 1
                    && let Some(value) = rest.strip_prefix(':')
                    && serde_json::from_str::<String>(&text[i..end]).is_ok_and(|k| k == key)
                {
                    let mut de = serde_json::Deserializer::from_str(value.trim_start());
                    if let Ok(value) = T::deserialize(&mut de) {
                        return Some(value);
                    }
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index just past the closing quote of the JSON string starting at
/// `start` (a `"`), or `None` when the text ends inside it.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The starting design's document (`v0`): camelCase names, an `iterationCount`,
/// snake_case statuses, numeric comment ids, plain error strings, and none of
/// the supersession, audit or journal fields.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateV0 {
    task_id: String,
    #[serde(default)]
    iteration_count: u32,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    feedback: Vec<FeedbackV0>,
    #[serde(default)]
    errors: Vec<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    last_updated: Option<Timestamp>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FeedbackV0 {
    comment_id: Value,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    body: String,
    #[serde(default)]
    author: String,
    #[serde(default)]
    created_at: Option<Timestamp>,
    #[serde(default)]
    resolved: bool,
}

impl StateV0 {
    fn migrate(self) -> RemediationState {
        let now = self.last_updated.unwrap_or(Timestamp::UNIX_EPOCH);
        let mut state = RemediationState::new(self.task_id, now);
        state.iteration = self.iteration_count;
        state.status = match self.status.as_deref() {
            Some("in_progress") => TaskStatus::InProgress,
            Some("completed") => TaskStatus::Completed,
            Some("failed") => TaskStatus::Failed,
            Some("max_iterations_reached") => TaskStatus::MaxIterationsReached,
            _ => TaskStatus::Initialized,
        };
        for f in self.feedback {
            let comment_id = match f.comment_id {
                Value::String(s) => s,
                other => other.to_string(),
            };
            state.append_feedback(FeedbackEntry {
                comment_id,
                severity: match f.severity.as_deref() {
                    Some("critical") => Severity::Critical,
                    Some("high") => Severity::High,
                    Some("medium") => Severity::Medium,
                    _ => Severity::Low,
                },
                resolved: f.resolved,
                body: f.body,
                author: f.author,
                created_at: f.created_at.unwrap_or(now),
                resolved_at: None,
                issue_type: None,
                extra: Default::default(),
            });
        }
        // v0 kept no time per error; the document's own time is the best we have.
        for message in self.errors {
            state.push_error(message, now);
        }
        state.metadata = self.metadata;
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(doc: Document) -> StoredDocument {
        StoredDocument {
            name: "task-t-state".into(),
            resource_version: "1".into(),
            document: doc,
        }
    }

    fn with_payload(json: &str) -> Document {
        let mut doc = Document {
            labels: state_labels("t"),
            ..Document::default()
        };
        doc.data.insert(KEY_STATE.into(), json.into());
        doc
    }

    #[test]
    fn a_v1_state_round_trips_unchanged() {
        let mut state = RemediationState::new("t", "2026-01-01T00:00:00Z".parse().unwrap());
        state.iteration = 3;
        state.metadata.insert("k".into(), "v".into());
        let enc = encode(
            &mut state.clone(),
            "task-t-state",
            None,
            None,
            &SizeLimits::default(),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        assert!(!enc.compressed);
        assert_eq!(enc.document.annotations[ANNOTATION_SCHEMA_VERSION], "v1");
        let dec = decode("t", 10, &stored(enc.document));
        assert_eq!(dec.origin, SchemaOrigin::Current);
        state.version = SCHEMA_VERSION.into();
        assert_eq!(dec.state, state);
    }

    #[test]
    fn a_v0_document_migrates_on_read() {
        let v0 = r#"{"taskId":"t","iterationCount":4,"status":"in_progress",
            "feedback":[{"commentId":17,"severity":"high","body":"fix","author":"rev","createdAt":"2025-01-01T00:00:00Z"}],
            "errors":["boom"],"metadata":{"pr":"9"},"lastUpdated":"2025-01-02T00:00:00Z"}"#;
        let dec = decode("t", 10, &stored(with_payload(v0)));
        assert_eq!(dec.origin, SchemaOrigin::Migrated { from: "v0".into() });
        assert_eq!(dec.state.iteration, 4);
        assert_eq!(dec.state.status, TaskStatus::InProgress);
        assert_eq!(dec.state.feedback_history[0].comment_id, "17");
        assert_eq!(dec.state.feedback_history[0].severity, Severity::High);
        assert_eq!(dec.state.error_messages[0].message, "boom");
        assert_eq!(dec.state.metadata["pr"], "9");
        assert_eq!(dec.state.version, "v1");
    }

    #[test]
    fn a_newer_version_is_read_best_effort() {
        let v2 =
            r#"{"version":"v2","task_id":"t","iteration":2,"status":"InProgress","shiny":true}"#;
        let dec = decode("t", 10, &stored(with_payload(v2)));
        assert_eq!(
            dec.origin,
            SchemaOrigin::Newer {
                version: "v2".into()
            }
        );
        assert_eq!(dec.state.iteration, 2);
    }

    #[test]
    fn corrupt_json_is_rebuilt_from_the_keys_that_still_parse() {
        let broken = r#"{"version":"v1","task_id":"t","iteration":7,"status":"InProgress","metadata":{"a":"b"},"feedback_history":[{"comm"#;
        let dec = decode("t", 10, &stored(with_payload(broken)));
        assert!(matches!(dec.origin, SchemaOrigin::Rebuilt { .. }));
        assert_eq!(dec.state.task_id, "t");
        assert_eq!(dec.state.iteration, 7);
        assert_eq!(dec.state.status, TaskStatus::InProgress);
        assert_eq!(dec.state.metadata["a"], "b");
        assert_eq!(dec.corrupt, Some(CorruptPayload::Text(broken.into())));

        let broken = r#"{"applied_writes":["a1","b2"],"task_id":"t","feedback_history":[{"#;
        let dec = decode("t", 10, &stored(with_payload(broken)));
        assert_eq!(dec.state.applied_writes(), ["a1", "b2"]);
    }

    /// Issue 12, item 7: a newer replica wrote a status this build does not
    /// know. Before, the document was taken for corruption: rebuilt, and
    /// quarantined and overwritten by the next update of this older replica.
    #[test]
    fn valid_json_with_a_value_this_build_does_not_know_is_read_only_not_corrupt() {
        let newer = r#"{"version":"v1","task_id":"t","iteration":3,"status":"Paused","metadata":{"a":"b"}}"#;
        let dec = decode("t", 10, &stored(with_payload(newer)));
        assert!(
            matches!(&dec.origin, SchemaOrigin::Undecodable { reason } if reason.contains("Paused")),
            "{:?}",
            dec.origin
        );
        assert_eq!(dec.corrupt, None, "nothing to quarantine");
        assert_eq!(dec.state.iteration, 3, "read best-effort");
        assert_eq!(dec.state.metadata["a"], "b");

        let newer_severity = r#"{"version":"v1","task_id":"t","feedback_history":[{"comment_id":"1","severity":"Blocker","body":"","author":"a","created_at":"2026-01-01T00:00:00Z"}]}"#;
        let dec = decode("t", 10, &stored(with_payload(newer_severity)));
        assert!(matches!(dec.origin, SchemaOrigin::Undecodable { .. }));
    }

    /// Issue 12, item 7: salvage read the first `"status"` anywhere in the
    /// text, so a metadata entry (or a journal step's status) was taken for
    /// the task's.
    #[test]
    fn salvage_reads_only_the_top_level_keys() {
        let broken = r#"{"version":"v1","task_id":"t","metadata":{"status":"Completed","iteration":"9"},"iteration":2,"feedback_history":[{"comm"#;
        let dec = decode("t", 10, &stored(with_payload(broken)));
        assert!(matches!(dec.origin, SchemaOrigin::Rebuilt { .. }));
        assert_eq!(
            dec.state.status,
            TaskStatus::Initialized,
            "no top-level status"
        );
        assert_eq!(dec.state.iteration, 2);
        assert_eq!(dec.state.metadata["status"], "Completed");

        let tricky =
            r#"{"note":"a \"status\": \"Failed\" in a string","status":"InProgress","x":{"#;
        assert_eq!(
            salvage_key::<TaskStatus>(tricky, "status"),
            Some(TaskStatus::InProgress)
        );
        assert_eq!(
            salvage_key::<TaskStatus>(r#"{"x":{"status":"Failed"}}"#, "status"),
            None
        );
        assert_eq!(salvage_key::<u32>(r#"{"iteration":"#, "iteration"), None);
        assert_eq!(
            salvage_key::<u32>(r#"{"s":"unterminated"#, "iteration"),
            None
        );
    }

    #[test]
    fn a_rebuilt_state_keeps_the_journal_and_histories_that_parse_and_stays_valid() {
        let mut original = RemediationState::new("t", "2026-01-01T00:00:00Z".parse().unwrap());
        original.iteration = 2;
        original.status = TaskStatus::InProgress;
        original
            .begin_operation(crate::OperationJournal::begin(
                "op-1",
                crate::OperationKind::Cancellation,
                "pod/1",
                Timestamp::UNIX_EPOCH,
            ))
            .unwrap();
        original.observe_head(&crate::Supersession {
            head_sha: "abcdef1".into(),
            pushed_at: Timestamp::UNIX_EPOCH,
            delivery_id: "d".into(),
            correlation_id: None,
        });
        original.push_error("boom", Timestamp::UNIX_EPOCH);
        original.observe_delivery("guid-1:7", None);
        let mut json = serde_json::to_string(&original).unwrap();
        // A head that breaks an invariant, and a payload cut short.
        json = json.replace("\"sha\":\"abcdef1\"", "\"sha\":\"not a sha\"");
        json.truncate(json.len() - 5);

        let dec = decode("t", 10, &stored(with_payload(&json)));
        assert!(matches!(dec.origin, SchemaOrigin::Rebuilt { .. }));
        let state = &dec.state;
        assert_eq!(state.active_operation, original.active_operation);
        assert_eq!(state.pending_supersessions, original.pending_supersessions);
        assert_eq!(state.error_messages, original.error_messages);
        assert_eq!(
            state.recent_deliveries, original.recent_deliveries,
            "a redelivery stays a duplicate after a rebuild"
        );
        assert_eq!(state.status, TaskStatus::InProgress);
        assert_eq!(state.iteration, 2);
        assert_eq!(state.latest_head, None, "an invalid part is left out");
        state.validate("t", 10).unwrap();
    }

    #[test]
    fn a_quarantine_copy_too_large_to_keep_whole_says_it_was_truncated() {
        let mut state = RemediationState::new("t", Timestamp::UNIX_EPOCH);
        let raw = "x".repeat(MAX_QUARANTINE_BYTES + 10);
        let payload = CorruptPayload::Text(raw.clone());
        let enc = encode(
            &mut state,
            "task-t-state",
            None,
            Some((&payload, "unparsable JSON")),
            &SizeLimits::default(),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        let doc = &enc.document;
        assert_eq!(doc.data[KEY_STATE_CORRUPT].len(), MAX_QUARANTINE_BYTES);
        assert_eq!(
            doc.annotations[ANNOTATION_QUARANTINE_ORIGINAL_BYTES],
            raw.len().to_string()
        );

        let small = CorruptPayload::Text("{".into());
        let enc = encode(
            &mut state,
            "task-t-state",
            Some(doc),
            Some((&small, "unparsable JSON")),
            &SizeLimits::default(),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(enc.document.data[KEY_STATE_CORRUPT], "{");
        assert!(
            !enc.document
                .annotations
                .contains_key(ANNOTATION_QUARANTINE_ORIGINAL_BYTES)
        );
    }

    #[test]
    fn the_size_estimate_counts_escaping_and_base64() {
        let mut doc = Document::default();
        doc.data.insert("k".into(), "\"\"".into());
        doc.binary_data.insert("b".into(), vec![0; 3]);
        assert_eq!(
            encoded_size("n", &doc),
            METADATA_OVERHEAD + 1 + (1 + 6 + 6) + (1 + 4 + 6)
        );
    }

    #[test]
    fn unknown_version_strings_count_as_newer() {
        assert!(is_newer("v2"));
        assert!(is_newer("banana"));
        assert!(!is_newer("v1"));
        assert!(!is_newer("v0"));
    }
}
