//! Round trips for every schema path through the store: v1 as written, an
//! older document migrating, a newer one refusing to be overwritten, a corrupt
//! one quarantined and rebuilt, a huge history compacted then compressed, and
//! an impossible one rejected with nothing written.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use jiff::Timestamp;
use state_store::naming::{
    ANNOTATION_QUARANTINED_AT, ANNOTATION_SCHEMA_VERSION, KEY_STATE, KEY_STATE_CORRUPT,
    KEY_STATE_GZIP, KEY_STATE_GZIP_CORRUPT, state_labels,
};
use state_store::{
    Document, Error, FeedbackEntry, MemoryBackend, RemediationState, SchemaOrigin, Severity,
    StateBackend, StateStore, TaskStatus,
};

fn setup() -> (Arc<MemoryBackend>, StateStore) {
    let memory = Arc::new(MemoryBackend::new());
    (memory.clone(), StateStore::new(memory))
}

async fn put_raw(memory: &MemoryBackend, task: &str, doc: Document) {
    memory
        .create(&format!("task-{task}-state"), doc)
        .await
        .unwrap();
}

fn raw_json(task: &str, json: &str) -> Document {
    let mut doc = Document {
        labels: state_labels(task),
        ..Document::default()
    };
    doc.data.insert(KEY_STATE.into(), json.into());
    doc
}

fn feedback(id: usize, severity: Severity, resolved: bool, body: String) -> FeedbackEntry {
    FeedbackEntry {
        comment_id: format!("c{id}"),
        severity,
        resolved,
        body,
        author: "reviewer".into(),
        created_at: Timestamp::from_second(1_700_000_000 + id as i64).unwrap(),
        resolved_at: None,
        issue_type: None,
        extra: Default::default(),
    }
}

#[tokio::test]
async fn a_v1_state_reads_back_exactly_as_written() {
    let (memory, store) = setup();
    let written = store
        .update("t", |s| {
            s.iteration = 3;
            s.status = TaskStatus::InProgress;
            s.metadata.insert("pr".into(), "42".into());
            s.append_feedback(feedback(1, Severity::Low, false, "nit".into()));
            s.push_error("boom", Timestamp::UNIX_EPOCH);
            Ok::<_, Error>(s.clone())
        })
        .await
        .unwrap();
    let snap = store.get("t").await.unwrap().unwrap();
    assert_eq!(snap.origin, SchemaOrigin::Current);
    let raw = memory.get("task-t-state").await.unwrap().unwrap();
    let stored: RemediationState = serde_json::from_str(&raw.document.data[KEY_STATE]).unwrap();
    assert_eq!(stored, snap.state);
    assert_eq!(snap.state.metadata, written.metadata);
    assert_eq!(snap.state.feedback_history, written.feedback_history);
    assert_eq!(snap.state.version, "v1");
}

#[tokio::test]
async fn an_older_document_migrates_on_read_and_is_written_back_as_v1() {
    let (memory, store) = setup();
    let v0 = r#"{"taskId":"old","iterationCount":2,"status":"in_progress",
        "feedback":[{"commentId":7,"severity":"critical","body":"b","author":"a",
                     "createdAt":"2025-05-01T00:00:00Z","resolved":true}],
        "errors":["e1"],"metadata":{"k":"v"},"lastUpdated":"2025-05-02T00:00:00Z"}"#;
    put_raw(&memory, "old", raw_json("old", v0)).await;

    let snap = store.get("old").await.unwrap().unwrap();
    assert_eq!(snap.origin, SchemaOrigin::Migrated { from: "v0".into() });
    assert_eq!(snap.state.iteration, 2);
    assert_eq!(snap.state.feedback_history[0].severity, Severity::Critical);

    assert_eq!(store.increment_iteration("old").await.unwrap(), 3);
    let raw = memory.get("task-old-state").await.unwrap().unwrap();
    assert_eq!(raw.document.annotations[ANNOTATION_SCHEMA_VERSION], "v1");
    let snap = store.get("old").await.unwrap().unwrap();
    assert_eq!(snap.origin, SchemaOrigin::Current);
    assert_eq!(snap.state.metadata["k"], "v");
    assert_eq!(snap.state.error_messages[0].message, "e1");
    assert_eq!(snap.state.feedback_history[0].comment_id, "7");
}

#[tokio::test]
async fn fields_this_build_does_not_know_survive_its_writes() {
    let (memory, store) = setup();
    // A v1 document from a build that added a field without a new version.
    let v1 = r#"{"version":"v1","task_id":"ext","iteration":1,"status":"InProgress",
        "review_budget":{"left":3}}"#;
    put_raw(&memory, "ext", raw_json("ext", v1)).await;
    assert_eq!(store.increment_iteration("ext").await.unwrap(), 2);
    let raw = memory.get("task-ext-state").await.unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_str(&raw.document.data[KEY_STATE]).unwrap();
    assert_eq!(json["review_budget"], serde_json::json!({"left": 3}));
    assert_eq!(json["iteration"], 2);
}

#[tokio::test]
async fn a_newer_document_is_readable_but_never_overwritten() {
    let (memory, store) = setup();
    let v2 =
        r#"{"version":"v2","task_id":"new","iteration":4,"status":"InProgress","quantum":{"x":1}}"#;
    put_raw(&memory, "new", raw_json("new", v2)).await;
    let before = memory.get("task-new-state").await.unwrap().unwrap();

    let snap = store.get("new").await.unwrap().unwrap();
    assert_eq!(
        snap.origin,
        SchemaOrigin::Newer {
            version: "v2".into()
        }
    );
    assert_eq!(snap.state.iteration, 4);

    let err = store.increment_iteration("new").await.unwrap_err();
    assert!(matches!(err, Error::UnsupportedVersion { ref found, .. } if found == "v2"));
    let err = store
        .update("new", |s| {
            s.metadata.clear();
            Ok::<_, Error>(())
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnsupportedVersion { .. }));
    assert_eq!(memory.get("task-new-state").await.unwrap().unwrap(), before);
}

#[tokio::test]
async fn a_corrupt_compressed_payload_is_quarantined_and_rebuilt_from_the_label() {
    let (memory, store) = setup();
    let mut doc = Document {
        labels: state_labels("gz"),
        ..Document::default()
    };
    doc.binary_data
        .insert(KEY_STATE_GZIP.into(), b"\x1f\x8bnot really gzip".to_vec());
    put_raw(&memory, "gz", doc).await;

    let snap = store.get("gz").await.unwrap().unwrap();
    assert!(matches!(snap.origin, SchemaOrigin::Rebuilt { .. }));
    assert_eq!(snap.state.task_id, "gz");

    assert_eq!(store.increment_iteration("gz").await.unwrap(), 1);
    let raw = memory.get("task-gz-state").await.unwrap().unwrap();
    assert_eq!(
        raw.document.binary_data[KEY_STATE_GZIP_CORRUPT],
        b"\x1f\x8bnot really gzip"
    );
    assert!(!raw.document.binary_data.contains_key(KEY_STATE_GZIP));
    assert!(
        raw.document
            .annotations
            .contains_key(ANNOTATION_QUARANTINED_AT)
    );
    assert_eq!(
        store.get("gz").await.unwrap().unwrap().origin,
        SchemaOrigin::Current
    );
}

#[tokio::test]
async fn corrupt_json_keeps_its_raw_copy_and_what_still_parses() {
    let (memory, store) = setup();
    let broken = r#"{"version":"v1","task_id":"cj","iteration":6,"status":"Failed","metadata":{"pr":"9"},"highest_fencing_token":{"lease_uid":"u","transitions":4},"feedback_history":[{"#;
    put_raw(&memory, "cj", raw_json("cj", broken)).await;
    store
        .update("cj", |s| {
            s.metadata.insert("repaired".into(), "true".into());
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    let raw = memory.get("task-cj-state").await.unwrap().unwrap();
    assert_eq!(raw.document.data[KEY_STATE_CORRUPT], broken);
    let snap = store.get("cj").await.unwrap().unwrap();
    assert_eq!(snap.state.iteration, 6);
    assert_eq!(snap.state.status, TaskStatus::Failed);
    assert_eq!(snap.state.metadata["pr"], "9");
    assert_eq!(
        snap.state
            .highest_fencing_token
            .as_ref()
            .unwrap()
            .transitions,
        4
    );
}

#[tokio::test]
async fn a_huge_history_is_compacted_then_compressed_and_reads_back() {
    let (memory, store) = setup();
    // 1 000 unresolved Low entries (droppable) and 40 resolved Critical ones of
    // ~20 KiB (kept): compaction alone cannot get under the threshold.
    store
        .update("huge", |s| {
            for i in 0..40 {
                s.append_feedback(feedback(
                    i,
                    Severity::Critical,
                    true,
                    format!("crit {i} ").repeat(3_000),
                ));
            }
            for i in 40..1_040 {
                s.append_feedback(feedback(
                    i,
                    Severity::Low,
                    false,
                    format!("low {i} ").repeat(100),
                ));
            }
            Ok::<_, Error>(())
        })
        .await
        .unwrap();

    let raw = memory.get("task-huge-state").await.unwrap().unwrap();
    assert!(raw.document.binary_data.contains_key(KEY_STATE_GZIP));
    assert!(!raw.document.data.contains_key(KEY_STATE));

    let snap = store.get("huge").await.unwrap().unwrap();
    let ids: Vec<&str> = snap
        .state
        .feedback_history
        .iter()
        .map(|e| e.comment_id.as_str())
        .collect();
    assert_eq!(ids.len(), 40 + 15);
    assert_eq!(ids[0], "c0");
    assert_eq!(*ids.last().unwrap(), "c1039");
    let compaction = &snap.state.compactions[0];
    assert_eq!(compaction.dropped, 1_000 - 15);
    assert_eq!(compaction.kept, 55);
    assert_eq!(compaction.dropped_comment_ids[0], "c40");
}

#[tokio::test]
async fn a_history_that_only_needs_compaction_stays_plain_json() {
    let (memory, store) = setup();
    store
        .update("mid", |s| {
            for i in 0..1_000 {
                s.append_feedback(feedback(i, Severity::Medium, false, "x".repeat(1_000)));
            }
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    let raw = memory.get("task-mid-state").await.unwrap().unwrap();
    assert!(raw.document.data.contains_key(KEY_STATE));
    assert!(raw.document.binary_data.is_empty());
    let snap = store.get("mid").await.unwrap().unwrap();
    assert_eq!(snap.state.feedback_history.len(), 15);
    assert_eq!(snap.state.compactions.len(), 1);
}

#[tokio::test]
async fn an_impossible_state_is_rejected_and_nothing_is_written() {
    let (memory, store) = setup();
    store.increment_iteration("imp").await.unwrap();
    let before = memory.get("task-imp-state").await.unwrap().unwrap();
    let err = store
        .update("imp", |s| {
            // ~2 MB of incompressible text in a field compaction cannot touch.
            let mut x: u64 = 0x2545_f491_4f6c_dd1d;
            let noise: String = (0..250_000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    format!("{:08x}", x as u32)
                })
                .collect();
            s.metadata.insert("noise".into(), noise);
            s.iteration += 1;
            Ok::<_, Error>(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                limit: 1_000_000,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(memory.get("task-imp-state").await.unwrap().unwrap(), before);
}

/// Issue 21, item 6: a feedback body over the limit is refused with an
/// error naming the entry and the sizes, and nothing is written; one at the
/// limit is kept.
#[tokio::test]
async fn a_feedback_body_over_the_limit_is_refused_naming_it() {
    let (memory, store) = setup();
    let limit = state_store::schema::MAX_FEEDBACK_BODY_BYTES;
    let at_limit = feedback(1, Severity::Low, false, "x".repeat(limit));
    assert!(store.append_feedback("big", at_limit).await.unwrap());
    let over = feedback(2, Severity::Low, false, "x".repeat(limit + 1));
    let err = store.append_feedback("big", over).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Invalid { .. }), "{text}");
    assert!(text.contains("\"c2\""), "{text}");
    assert!(text.contains(&format!("{} bytes", limit + 1)), "{text}");
    let raw = memory.get("task-big-state").await.unwrap().unwrap();
    assert!(
        !raw.document.data[KEY_STATE].contains("\"c2\""),
        "nothing written"
    );
}
