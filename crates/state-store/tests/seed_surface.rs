//! The starting design's operator surface (issue 21): its v1 documents read
//! as v1 and kept whole, `recover_state` and the small reads it names, and
//! the flat `data` keys kubectl users read.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use jiff::Timestamp;
use state_store::naming::{KEY_STATE, state_labels};
use state_store::{
    ConfigMapBackend, Document, IssueType, MemoryBackend, RepairKind, SchemaOrigin, StateBackend,
    StateStore, StoreConfig, TaskStatus,
};
use testkit::kube::FakeKube;

/// A ConfigMap as the starting design's `create_or_update_state` writes
/// it: the flat keys beside a `v1` payload whose feedback uses its field
/// names (`pr_comment_id`, `description`, `timestamp`, `issue_type`), one
/// field this build does not know on an entry (`file_path`) and one at the
/// top (`agent_notes`); iteration 12 (over a maximum of 10) and a comment
/// delivered twice.
fn seed_document() -> Document {
    let mut doc = Document {
        labels: state_labels("42"),
        ..Document::default()
    };
    for (key, value) in [
        ("task_id", "42"),
        ("iteration", "12"),
        ("last_update", "2026-03-01T10:05:00Z"),
        ("status", "InProgress"),
        ("iteration_1_started", "2026-03-01T09:00:00Z"),
    ] {
        doc.data.insert(key.into(), value.into());
    }
    doc.data.insert(
        KEY_STATE.into(),
        r#"{
  "version": "v1",
  "task_id": "42",
  "iteration": 12,
  "status": "InProgress",
  "last_update": "2026-03-01T10:05:00Z",
  "feedback_history": [
    {"pr_comment_id": "1001", "issue_type": "Bug", "severity": "High",
     "description": "race between the lock and the write", "timestamp": "2026-03-01T10:00:00Z",
     "resolved": false, "file_path": "src/lock.rs"},
    {"pr_comment_id": "1002", "issue_type": "Security", "severity": "Critical",
     "description": "token logged", "timestamp": "2026-03-01T10:01:00Z", "resolved": true},
    {"pr_comment_id": "1001", "issue_type": "Bug", "severity": "High",
     "description": "race between the lock and the write (edited)", "timestamp": "2026-03-01T10:02:00Z",
     "resolved": false, "file_path": "src/lock.rs"}
  ],
  "error_messages": [],
  "metadata": {"pr": "acme/widgets#7"},
  "agent_notes": "kept as it is"
}"#
        .into(),
    );
    doc
}

fn store_on(backend: Arc<dyn StateBackend>) -> StateStore {
    StateStore::with_config(
        backend,
        StoreConfig {
            max_iterations: 10,
            ..StoreConfig::default()
        },
    )
}

#[tokio::test]
async fn a_seed_document_reads_as_v1_with_its_feedback_and_is_repaired_not_refused() {
    let memory = Arc::new(MemoryBackend::new());
    memory
        .create("task-42-state", seed_document())
        .await
        .unwrap();
    let store = store_on(memory.clone());

    let read = store.get("42").await.unwrap().unwrap();
    assert_eq!(
        read.origin,
        SchemaOrigin::Current,
        "read as v1, not rebuilt"
    );
    let feedback = &read.state.feedback_history;
    assert_eq!(
        feedback.len(),
        2,
        "the duplicate comment reduced to its newest"
    );
    let edited = feedback.iter().find(|e| e.comment_id == "1001").unwrap();
    assert_eq!(edited.body, "race between the lock and the write (edited)");
    assert_eq!(edited.issue_type, Some(IssueType::Bug));
    assert_eq!(edited.extra["file_path"], "src/lock.rs");
    assert_eq!(edited.author, "", "the seed does not record one");
    let security = feedback.iter().find(|e| e.comment_id == "1002").unwrap();
    assert_eq!(security.issue_type, Some(IssueType::Security));
    assert!(security.resolved);
    assert_eq!(read.state.iteration, 10, "capped");
    assert_eq!(read.state.status, TaskStatus::MaxIterationsReached);
    assert_eq!(store.current_iteration("42").await.unwrap(), Some(10));
    assert_eq!(store.feedback_history("42").await.unwrap().len(), 2);

    let recovery = store.recover_state("42").await.unwrap();
    assert!(recovery.written);
    let kinds: Vec<RepairKind> = recovery.repairs.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            RepairKind::IterationCapped,
            RepairKind::DuplicateFeedbackDropped
        ]
    );

    // The round trip keeps every field the document had.
    let raw = memory.get("task-42-state").await.unwrap().unwrap();
    let written: serde_json::Value = serde_json::from_str(&raw.document.data[KEY_STATE]).unwrap();
    assert_eq!(written["agent_notes"], "kept as it is");
    assert_eq!(written["metadata"]["pr"], "acme/widgets#7");
    let entries = written["feedback_history"].as_array().unwrap();
    let first = entries.iter().find(|e| e["comment_id"] == "1001").unwrap();
    assert_eq!(first["issue_type"], "Bug");
    assert_eq!(first["file_path"], "src/lock.rs");
    assert_eq!(
        first["body"],
        "race between the lock and the write (edited)"
    );
    assert_eq!(first["created_at"], "2026-03-01T10:02:00Z");
    let after = store.get("42").await.unwrap().unwrap().state;
    assert!(after.last_recovery.is_some());
    assert_eq!(after.repairs.len(), 2, "recorded in the state");
}

#[tokio::test]
async fn recover_state_creates_a_fresh_state_and_then_changes_nothing() {
    let memory = Arc::new(MemoryBackend::new());
    let store = store_on(memory.clone());

    let first = store.recover_state("7").await.unwrap();
    assert!(first.created && first.written);
    let created = memory.get("task-7-state").await.unwrap().unwrap();
    let state = store.get("7").await.unwrap().unwrap().state;
    assert_eq!(state.status, TaskStatus::Initialized);
    assert!(state.last_recovery.is_some());

    let again = store.recover_state("7").await.unwrap();
    assert!(!again.created && !again.written, "{again:?}");
    assert!(again.repairs.is_empty());
    let unchanged = memory.get("task-7-state").await.unwrap().unwrap();
    assert_eq!(
        unchanged.resource_version, created.resource_version,
        "idempotent: nothing written"
    );
    assert_eq!(store.current_iteration("missing").await.unwrap(), None);
    assert!(store.feedback_history("missing").await.unwrap().is_empty());
}

#[tokio::test]
async fn recover_state_migrates_an_old_document_and_rebuilds_an_unreadable_one() {
    let memory = Arc::new(MemoryBackend::new());
    let store = store_on(memory.clone());
    let mut old = Document {
        labels: state_labels("old"),
        ..Document::default()
    };
    old.data.insert(
        KEY_STATE.into(),
        r#"{"taskId":"old","iterationCount":2,"status":"in_progress"}"#.into(),
    );
    memory.create("task-old-state", old).await.unwrap();
    let mut broken = Document {
        labels: state_labels("broken"),
        ..Document::default()
    };
    broken
        .data
        .insert(KEY_STATE.into(), r#"{"version":"v1","task_id":"bro"#.into());
    memory.create("task-broken-state", broken).await.unwrap();

    let migrated = store.recover_state("old").await.unwrap();
    assert_eq!(migrated.migrated_from.as_deref(), Some("v0"));
    assert!(migrated.written);
    let read = store.get("old").await.unwrap().unwrap();
    assert_eq!(read.origin, SchemaOrigin::Current, "stored as v1 now");
    assert_eq!(read.state.iteration, 2);

    let rebuilt = store.recover_state("broken").await.unwrap();
    assert!(rebuilt.rebuilt.is_some(), "{rebuilt:?}");
    let read = store.get("broken").await.unwrap().unwrap();
    assert_eq!(read.origin, SchemaOrigin::Current);
    let raw = memory.get("task-broken-state").await.unwrap().unwrap();
    assert!(
        raw.document
            .data
            .contains_key(state_store::naming::KEY_STATE_CORRUPT),
        "the unreadable payload kept beside the rebuilt one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reads_the_flat_keys_every_write_derives() {
    let kube = FakeKube::start().await.unwrap();
    let store = store_on(Arc::new(ConfigMapBackend::new(kube.client(), "default")));
    store.increment_iteration("42").await.unwrap();
    store.increment_iteration("42").await.unwrap();
    store
        .update("42", |s| {
            s.status = TaskStatus::Completed;
            Ok::<_, state_store::Error>(())
        })
        .await
        .unwrap();
    let state = store.get("42").await.unwrap().unwrap().state;

    let config_map: k8s_openapi::api::core::v1::ConfigMap =
        kube.peek("default", "task-42-state").unwrap();
    let data = config_map.data.unwrap();
    assert_eq!(data["task_id"], "42");
    assert_eq!(data["iteration"], "2");
    assert_eq!(data["status"], "Completed");
    assert_eq!(data["last_update"], state.last_update.to_string());
    let started: Timestamp = data["iteration_2_started"].parse().unwrap();
    assert_eq!(Some(&started), state.iteration_started.get(&2));
    assert!(data.contains_key("iteration_1_started"));

    let Some(kubectl) = which("kubectl") else {
        println!(
            "kubectl is not on PATH: skipping the kubectl half (CI installs kubernetes-client)"
        );
        return;
    };
    let kubeconfig = kube.kubeconfig().unwrap().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args([
                "get",
                "cm",
                "task-42-state",
                "-n",
                "default",
                "-o",
                "jsonpath={.data.iteration}",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "2");
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|path| path.is_file())
}
