//! The conformance suite: the same checks run on `MemoryBackend` and on
//! `ConfigMapBackend` against testkit's fake API server (real HTTP, real
//! `kube::Client`), so the in-memory backend is a faithful test double.
//!
//! Part one checks the `StateBackend` contract (versions, conflicts,
//! conditional deletes, selectors); part two checks the store end to end
//! (schema paths, compression, concurrency) through each backend.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use state_store::naming::{
    ANNOTATION_QUARANTINED_AT, KEY_STATE, KEY_STATE_CORRUPT, KEY_STATE_GZIP, state_labels,
};
use state_store::{
    CancellationOutcome, CancellationRecord, ConfigMapBackend, DeliveryRecorded, Document, Error,
    FeedbackEntry, FencingToken, MemoryBackend, OperationJournal, OperationKind, RepairKind,
    SchemaOrigin, Severity, StateBackend, StateStore, Step, StepStatus, StoreConfig, Supersession,
    TaskStatus,
};
use testkit::kube::FakeKube;

// ---------------------------------------------------------------------------
// The shared checks.
// ---------------------------------------------------------------------------

fn doc(value: &str) -> Document {
    let mut d = Document {
        labels: state_labels("c1"),
        ..Document::default()
    };
    d.annotations
        .insert("example.dev/note".into(), "kept".into());
    d.data.insert("k".into(), value.into());
    d.binary_data
        .insert("b".into(), vec![0, 159, 146, 150, 255]);
    d
}

async fn created_document_reads_back_exactly(backend: Arc<dyn StateBackend>) {
    assert!(backend.get("task-c1-state").await.unwrap().is_none());
    let created = backend.create("task-c1-state", doc("v")).await.unwrap();
    let read = backend.get("task-c1-state").await.unwrap().unwrap();
    assert_eq!(read.name, "task-c1-state");
    assert_eq!(read.resource_version, created.resource_version);
    assert_eq!(read.document.data, doc("v").data);
    assert_eq!(read.document.binary_data, doc("v").binary_data);
    assert_eq!(read.document.labels, doc("v").labels);
    assert_eq!(read.document.annotations["example.dev/note"], "kept");
}

async fn creating_an_existing_document_is_already_exists(backend: Arc<dyn StateBackend>) {
    backend.create("task-c1-state", doc("a")).await.unwrap();
    let err = backend.create("task-c1-state", doc("b")).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    let read = backend.get("task-c1-state").await.unwrap().unwrap();
    assert_eq!(read.document.data["k"], "a");
}

async fn replace_with_the_read_version_succeeds_and_moves_the_version(
    backend: Arc<dyn StateBackend>,
) {
    let v1 = backend.create("task-c1-state", doc("a")).await.unwrap();
    let v2 = backend
        .replace("task-c1-state", &v1.resource_version, doc("b"))
        .await
        .unwrap();
    assert_ne!(v1.resource_version, v2.resource_version);
    let read = backend.get("task-c1-state").await.unwrap().unwrap();
    assert_eq!(read.resource_version, v2.resource_version);
    assert_eq!(read.document.data["k"], "b");
}

async fn replace_with_a_stale_version_conflicts_and_changes_nothing(
    backend: Arc<dyn StateBackend>,
) {
    let v1 = backend.create("task-c1-state", doc("a")).await.unwrap();
    backend
        .replace("task-c1-state", &v1.resource_version, doc("b"))
        .await
        .unwrap();
    let err = backend
        .replace("task-c1-state", &v1.resource_version, doc("c"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert!(err.is_transient());
    let read = backend.get("task-c1-state").await.unwrap().unwrap();
    assert_eq!(read.document.data["k"], "b");
}

async fn replace_of_a_missing_document_is_not_found(backend: Arc<dyn StateBackend>) {
    let err = backend
        .replace("task-c1-state", "1", doc("a"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(backend.get("task-c1-state").await.unwrap().is_none());
}

async fn delete_is_conditional_on_the_version(backend: Arc<dyn StateBackend>) {
    let v1 = backend.create("task-c1-state", doc("a")).await.unwrap();
    let v2 = backend
        .replace("task-c1-state", &v1.resource_version, doc("b"))
        .await
        .unwrap();
    let err = backend
        .delete("task-c1-state", &v1.resource_version)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert!(backend.get("task-c1-state").await.unwrap().is_some());
    backend
        .delete("task-c1-state", &v2.resource_version)
        .await
        .unwrap();
    assert!(backend.get("task-c1-state").await.unwrap().is_none());
    let err = backend
        .delete("task-c1-state", &v2.resource_version)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

async fn list_selects_by_every_label(backend: Arc<dyn StateBackend>) {
    backend.create("task-c1-state", doc("a")).await.unwrap();
    let mut other = doc("b");
    other.labels = state_labels("c2");
    backend.create("task-c2-state", other).await.unwrap();
    let mut foreign = doc("c");
    foreign.labels = BTreeMap::from([("app".to_owned(), "something-else".to_owned())]);
    backend.create("unrelated", foreign).await.unwrap();

    let all = backend
        .list(&state_store::naming::state_selector())
        .await
        .unwrap();
    let mut names: Vec<_> = all.iter().map(|d| d.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["task-c1-state", "task-c2-state"]);

    let one = backend.list(&state_labels("c2")).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].name, "task-c2-state");
    assert_eq!(one[0].document.data["k"], "b");
}

async fn store_update_and_operations_round_trip(backend: Arc<dyn StateBackend>) {
    let store = StateStore::new(backend.clone());
    assert!(store.get("t1").await.unwrap().is_none());
    assert_eq!(store.increment_iteration("t1").await.unwrap(), 1);
    assert_eq!(store.increment_iteration("t1").await.unwrap(), 2);
    let push = Supersession {
        head_sha: "abc1234".into(),
        pushed_at: "2026-01-01T00:00:00Z".parse().unwrap(),
        delivery_id: "d1".into(),
        correlation_id: Some("c1".into()),
    };
    assert!(store.record_supersession("t1", &push).await.unwrap());
    assert!(!store.record_supersession("t1", &push).await.unwrap());
    let entry = FeedbackEntry {
        comment_id: "100".into(),
        severity: Severity::High,
        resolved: false,
        body: "fix the race".into(),
        author: "reviewer".into(),
        created_at: Timestamp::UNIX_EPOCH,
        resolved_at: None,
        issue_type: None,
        extra: Default::default(),
    };
    assert!(store.append_feedback("t1", entry.clone()).await.unwrap());
    assert!(!store.append_feedback("t1", entry).await.unwrap());

    let snap = store.get("t1").await.unwrap().unwrap();
    assert_eq!(snap.origin, SchemaOrigin::Current);
    assert_eq!(snap.state.iteration, 2);
    assert_eq!(snap.state.status, TaskStatus::InProgress);
    assert_eq!(snap.state.latest_head.as_ref().unwrap().sha, "abc1234");
    assert_eq!(snap.state.feedback_history.len(), 1);

    let raw = backend.get("task-t1-state").await.unwrap().unwrap();
    assert_eq!(raw.document.labels, state_labels("t1"));
    assert_eq!(
        raw.document.annotations["supersede.dev/schema-version"],
        "v1"
    );
    assert!(raw.document.data.contains_key(KEY_STATE));

    let listed = store.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].resource_version, snap.resource_version);

    assert!(matches!(
        store.delete("t1", "0").await,
        Err(Error::Conflict { .. })
    ));
    assert!(store.delete("t1", &snap.resource_version).await.unwrap());
    assert!(store.get("t1").await.unwrap().is_none());
}

async fn store_compresses_large_states_and_reads_them_back(backend: Arc<dyn StateBackend>) {
    let store = StateStore::new(backend.clone());
    // 30 resolved criticals (always kept by compaction) of 30 KiB each: ~900 KiB
    // of compressible text, too large plain even after compaction.
    store
        .update("big", |s| {
            for i in 0..30 {
                s.append_feedback(FeedbackEntry {
                    comment_id: format!("c{i}"),
                    severity: Severity::Critical,
                    resolved: true,
                    body: format!("{i} ").repeat(10_000),
                    author: "r".into(),
                    created_at: Timestamp::UNIX_EPOCH,
                    resolved_at: None,
                    issue_type: None,
                    extra: Default::default(),
                });
            }
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    let raw = backend.get("task-big-state").await.unwrap().unwrap();
    assert!(raw.document.binary_data.contains_key(KEY_STATE_GZIP));
    assert!(!raw.document.data.contains_key(KEY_STATE));
    let snap = store.get("big").await.unwrap().unwrap();
    assert_eq!(snap.state.feedback_history.len(), 30);
    assert_eq!(metric(&store, "state_store_compressions_total"), 1);
    // A later small update keeps working on the compressed form.
    assert_eq!(store.increment_iteration("big").await.unwrap(), 1);
}

/// Issue 12, item 7: a newer replica's document (a status this build does
/// not know) is read-only here: read best-effort, reported, never
/// quarantined or overwritten.
async fn store_never_overwrites_valid_json_it_cannot_decode(backend: Arc<dyn StateBackend>) {
    let mut d = Document {
        labels: state_labels("newer"),
        ..Document::default()
    };
    let newer = r#"{"version":"v1","task_id":"newer","iteration":4,"status":"Paused"}"#;
    d.data.insert(KEY_STATE.into(), newer.into());
    let created = backend.create("task-newer-state", d).await.unwrap();

    let store = StateStore::new(backend.clone());
    let snap = store.get("newer").await.unwrap().unwrap();
    assert!(
        matches!(snap.origin, SchemaOrigin::Undecodable { .. }),
        "{:?}",
        snap.origin
    );
    assert_eq!(snap.state.iteration, 4);
    let err = store.increment_iteration("newer").await.unwrap_err();
    assert!(matches!(err, Error::Undecodable { .. }), "{err}");
    assert!(!err.is_transient());

    let raw = backend.get("task-newer-state").await.unwrap().unwrap();
    assert_eq!(
        raw.resource_version, created.resource_version,
        "never written"
    );
    assert_eq!(raw.document.data[KEY_STATE], newer);
    assert!(!raw.document.data.contains_key(KEY_STATE_CORRUPT));
    assert_eq!(
        metric(
            &store,
            "state_store_read_only_documents_total{reason=\"undecodable\"}"
        ),
        2
    );
}

async fn store_writes_keep_foreign_metadata(backend: Arc<dyn StateBackend>) {
    let store = StateStore::new(backend.clone());
    store.increment_iteration("f1").await.unwrap();
    let read = backend.get("task-f1-state").await.unwrap().unwrap();
    let mut document = read.document;
    document
        .foreign_metadata
        .insert("finalizers".into(), serde_json::json!(["example.dev/keep"]));
    backend
        .replace("task-f1-state", &read.resource_version, document)
        .await
        .unwrap();

    store.increment_iteration("f1").await.unwrap();

    let after = backend.get("task-f1-state").await.unwrap().unwrap();
    assert_eq!(
        after.document.foreign_metadata.get("finalizers"),
        Some(&serde_json::json!(["example.dev/keep"]))
    );
}

/// Issue 21, item 1 (after issue 12, item 11): lowering `max_iterations`
/// below what a state already counted never locks the task out. The state
/// is repaired as the starting design's `validate_state` does — the
/// iteration capped, an active task stopped `MaxIterationsReached` — readers
/// see it so at once, the next write keeps the repair recorded in the state
/// and counts it, and counting further reports the limit.
async fn a_state_above_a_lowered_maximum_is_capped_stopped_and_the_repair_recorded(
    backend: Arc<dyn StateBackend>,
) {
    let generous = StateStore::with_config(
        backend.clone(),
        StoreConfig {
            max_iterations: 10,
            ..StoreConfig::default()
        },
    );
    for _ in 0..8 {
        generous.increment_iteration("lowered").await.unwrap();
    }
    generous
        .update("lowered", |s| {
            s.status = TaskStatus::InProgress;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    let strict = StateStore::with_config(
        backend.clone(),
        StoreConfig {
            max_iterations: 5,
            ..StoreConfig::default()
        },
    );

    let snap = strict.get("lowered").await.unwrap().unwrap();
    assert_eq!(snap.state.iteration, 5, "capped as it is read");
    assert_eq!(snap.state.status, TaskStatus::MaxIterationsReached);
    let raw = backend.get("task-lowered-state").await.unwrap().unwrap();
    assert!(
        raw.document.data[KEY_STATE].contains("\"iteration\":8"),
        "a read writes nothing"
    );

    strict
        .update("lowered", |s| {
            s.metadata.insert("note".into(), "still writable".into());
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    let snap = strict.get("lowered").await.unwrap().unwrap();
    assert_eq!(snap.state.iteration, 5);
    assert_eq!(snap.state.metadata["note"], "still writable");
    let repairs: Vec<_> = snap.state.repairs.iter().map(|r| r.kind).collect();
    assert_eq!(repairs, [RepairKind::IterationCapped], "recorded once");
    assert!(
        snap.state.repairs[0]
            .detail
            .contains("iteration 8 capped at the maximum 5")
    );
    assert_eq!(repaired(&strict, "iteration_capped"), 1);

    let err = strict.increment_iteration("lowered").await.unwrap_err();
    assert!(
        matches!(err, Error::MaxIterationsReached { max: 5, .. }),
        "{err}"
    );
    // A write may not raise the counter above the limit by hand either.
    let raised = strict
        .update("lowered", |s| {
            s.iteration += 1;
            Ok::<_, Error>(())
        })
        .await;
    assert!(
        matches!(raised, Err(Error::MaxIterationsReached { .. })),
        "{raised:?}"
    );
    assert_eq!(repaired(&strict, "iteration_capped"), 1, "repaired once");
}

/// Issue 21, item 1: feedback that repeats a comment id (written by an old
/// tool) is read with the newest of each kept, and the first write stores
/// that, recorded — never refused.
async fn duplicate_feedback_is_repaired_to_the_newest_of_each_not_refused(
    backend: Arc<dyn StateBackend>,
) {
    let mut doc = Document {
        labels: state_labels("dup"),
        ..Document::default()
    };
    doc.data.insert(
        KEY_STATE.into(),
        r#"{"version":"v1","task_id":"dup","iteration":1,"status":"InProgress","feedback_history":[
            {"comment_id":"7","severity":"High","body":"old","author":"a","created_at":"2026-01-01T00:00:00Z"},
            {"comment_id":"8","severity":"Low","body":"other","author":"a","created_at":"2026-01-01T00:01:00Z"},
            {"comment_id":"7","severity":"High","body":"new","author":"a","created_at":"2026-01-01T00:02:00Z"}]}"#
            .into(),
    );
    backend.create("task-dup-state", doc).await.unwrap();
    let store = StateStore::new(backend);

    let read = store.get("dup").await.unwrap().unwrap();
    let bodies: Vec<&str> = read
        .state
        .feedback_history
        .iter()
        .map(|e| e.body.as_str())
        .collect();
    assert_eq!(bodies, ["other", "new"]);
    store.increment_iteration("dup").await.unwrap();
    let written = store.get("dup").await.unwrap().unwrap();
    assert_eq!(written.state.feedback_history.len(), 2);
    assert_eq!(written.state.iteration, 2);
    assert_eq!(
        written.state.repairs[0].kind,
        RepairKind::DuplicateFeedbackDropped
    );
    assert_eq!(repaired(&store, "duplicate_feedback_dropped"), 1);
}

/// The value of `state_store_repairs_total{kind}`.
fn repaired(store: &StateStore, kind: &str) -> u64 {
    let mut registry = prometheus_client::registry::Registry::default();
    store.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let series = format!("state_store_repairs_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str())?.parse().ok())
        .unwrap_or(0)
}

/// `update_on` chains writes on the state the caller holds, and stays a
/// compare-and-swap: a write in between is never lost.
async fn writes_on_a_held_state_chain_and_lose_nothing(backend: Arc<dyn StateBackend>) {
    let store = StateStore::new(backend);
    let mut known = store.get("chain").await.unwrap();
    assert!(known.is_none());
    store
        .update_on("chain", &mut known, None, |s| {
            s.metadata.insert("a".into(), "1".into());
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    assert_eq!(known.as_ref().unwrap().state.metadata["a"], "1");
    // Someone else writes in between: our next write conflicts, re-reads,
    // and keeps their change.
    store
        .update("chain", |s| {
            s.metadata.insert("other".into(), "x".into());
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    store
        .update_on("chain", &mut known, None, |s| {
            s.metadata.insert("b".into(), "2".into());
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    let read = store.get("chain").await.unwrap().unwrap();
    assert_eq!(read.state.metadata["other"], "x");
    assert_eq!(read.state.metadata["b"], "2");
    assert_eq!(
        known.as_ref().unwrap().resource_version,
        read.resource_version
    );
    // A stale "absent" view: the create meets AlreadyExists and re-reads.
    let mut stale = None;
    store
        .update_on("chain", &mut stale, None, |s| {
            s.metadata.insert("c".into(), "3".into());
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    let read = store.get("chain").await.unwrap().unwrap();
    assert_eq!(read.state.metadata.len(), 4);
}

/// A scan of every state, a page at a time, sees each state once.
async fn states_are_listed_page_by_page_each_once(backend: Arc<dyn StateBackend>) {
    let store = StateStore::new(backend);
    for i in 0..7 {
        store.increment_iteration(&format!("p{i}")).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let page = store.list_page(3, token).await.unwrap();
        pages += 1;
        assert!(page.states.len() <= 3);
        seen.extend(page.states.into_iter().map(|s| s.state.task_id));
        match page.continue_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    seen.sort();
    let expected: Vec<String> = (0..7).map(|i| format!("p{i}")).collect();
    assert_eq!(seen, expected);
    assert_eq!(pages, 3);
}

async fn store_quarantines_a_corrupt_payload_and_rebuilds(backend: Arc<dyn StateBackend>) {
    let mut d = Document {
        labels: state_labels("bad"),
        ..Document::default()
    };
    let broken =
        r#"{"version":"v1","task_id":"bad","iteration":4,"status":"InProgress","feedback_his"#;
    d.data.insert(KEY_STATE.into(), broken.into());
    backend.create("task-bad-state", d).await.unwrap();

    let store = StateStore::new(backend.clone());
    let snap = store.get("bad").await.unwrap().unwrap();
    assert!(matches!(snap.origin, SchemaOrigin::Rebuilt { .. }));
    assert_eq!(store.increment_iteration("bad").await.unwrap(), 5);

    let raw = backend.get("task-bad-state").await.unwrap().unwrap();
    assert_eq!(raw.document.data[KEY_STATE_CORRUPT], broken);
    assert!(
        raw.document.annotations[ANNOTATION_QUARANTINED_AT]
            .parse::<Timestamp>()
            .is_ok()
    );
    let snap = store.get("bad").await.unwrap().unwrap();
    assert_eq!(snap.origin, SchemaOrigin::Current);
    assert_eq!(snap.state.iteration, 5);
}

/// A token of acquisition `transitions` of the Lease object `uid`, created
/// `created` seconds after the epoch.
fn token(uid: &str, created: i64, transitions: u64) -> FencingToken {
    FencingToken::new(uid, Timestamp::from_second(created).unwrap(), transitions)
}

fn refused<T>(result: &Result<T, Error>) -> bool {
    matches!(result, Err(Error::FencingTokenRefused { .. }))
}

async fn store_journal_and_fencing_round_trip(backend: Arc<dyn StateBackend>) {
    let store = StateStore::new(backend);
    let now = store.clock().now();
    let mut journal = OperationJournal::begin("op-1", OperationKind::Cancellation, "pod-a/1", now);
    journal.fencing_token = Some(token("lease-uid", 100, 3));
    journal.targets = vec!["coderun-a".into()];
    store.begin_operation("j1", journal.clone()).await.unwrap();
    // Beginning the same operation again (a retry) is harmless; another one is refused.
    store.begin_operation("j1", journal.clone()).await.unwrap();
    let other = OperationJournal::begin("op-2", OperationKind::Cancellation, "pod-b/1", now);
    assert!(matches!(
        store.begin_operation("j1", other).await,
        Err(Error::Journal { .. })
    ));
    store
        .advance_operation("j1", &journal, Step::Cancelled, StepStatus::Succeeded, None)
        .await
        .unwrap();
    store
        .advance_operation("j1", &journal, Step::Labeled, StepStatus::Succeeded, None)
        .await
        .unwrap();
    let snap = store.get("j1").await.unwrap().unwrap();
    let active = snap.state.active_operation.as_ref().unwrap();
    let steps: Vec<_> = active.steps.iter().map(|s| s.step.clone()).collect();
    assert_eq!(steps, [Step::Started, Step::Cancelled, Step::Labeled]);
    assert_eq!(
        snap.state.highest_fencing_token,
        Some(token("lease-uid", 100, 3))
    );

    // A paused holder with an older token is fenced off; nothing is written.
    let stale = store
        .update_fenced("j1", &token("lease-uid", 100, 2), |s| {
            s.iteration += 1;
            Ok::<_, Error>(())
        })
        .await;
    assert!(refused(&stale));
    let newer = token("lease-uid", 100, 4);
    store
        .update_fenced("j1", &newer, |s| {
            s.metadata.insert("by".into(), "holder-4".into());
            Ok::<_, Error>(())
        })
        .await
        .unwrap();

    // The journal's own token is now older than the state's highest: its
    // holder has lost the lock, so its next step is refused.
    assert!(refused(&store.finish_operation("j1", &journal, None).await));
    let resumed = store
        .resume_operation("j1", "op-1", "recovery/1", &newer)
        .await
        .unwrap();
    let record = CancellationRecord {
        operation_id: "op-1".into(),
        at: now,
        new_head_sha: "abcdef1".into(),
        targets: vec!["coderun-a".into()],
        superseded_heads: vec!["1234567".into()],
        started_at: Some(journal.started_at),
        finished_at: Some(now),
        outcome: CancellationOutcome::Cancelled,
        correlation_id: None,
        detail: None,
    };
    assert!(
        store
            .finish_operation("j1", &resumed, Some(record.clone()))
            .await
            .unwrap()
    );
    assert!(
        !store
            .finish_operation("j1", &resumed, Some(record))
            .await
            .unwrap()
    );
    let snap = store.get("j1").await.unwrap().unwrap();
    assert!(snap.state.active_operation.is_none());
    assert_eq!(snap.state.cancellation_history.len(), 1);
    let entry = &snap.state.cancellation_history[0];
    assert_eq!(entry.superseded_heads, ["1234567"]);
    assert_eq!(entry.started_at, Some(journal.started_at));
    assert_eq!(entry.finished_at, Some(now));
    assert_eq!(snap.state.iteration, 0);
    assert_eq!(snap.state.highest_fencing_token, Some(newer));

    // The Lease was garbage-collected and re-created a day later (new uid,
    // counting from 0): its holder writes; the paused holder of the old
    // Lease, whatever its transitions, stays fenced off.
    let recreated = token("lease-uid-2", 100 + 86_400, 0);
    store
        .update_fenced("j1", &recreated, |s| {
            s.metadata.insert("by".into(), "recreated-0".into());
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    let stale = store
        .update_fenced("j1", &token("lease-uid", 100, 99), |s| {
            s.metadata.insert("by".into(), "stale".into());
            Ok::<_, Error>(())
        })
        .await;
    assert!(refused(&stale));
    let snap = store.get("j1").await.unwrap().unwrap();
    assert_eq!(snap.state.metadata["by"], "recreated-0");
    assert_eq!(snap.state.highest_fencing_token, Some(recreated));
}

/// Issue 12, item 2: journal steps are fenced with the journal's token. A
/// holder pauses mid-operation; recovery takes the task's lock (a newer
/// token) and resumes the journal; the former holder wakes and tries to
/// advance and to finish the operation. Before, `advance_operation` and
/// `finish_operation` went through plain `update` and both landed.
async fn a_paused_holder_cannot_advance_or_finish_a_resumed_operation(
    backend: Arc<dyn StateBackend>,
) {
    let store = StateStore::new(backend);
    let now = store.clock().now();
    let mut journal = OperationJournal::begin("op-1", OperationKind::Cancellation, "pod-a/1", now);
    journal.fencing_token = Some(token("lease-uid", 100, 3));
    store.begin_operation("j2", journal.clone()).await.unwrap();

    let recovery_token = token("lease-uid", 100, 4);
    let resumed = store
        .resume_operation("j2", "op-1", "recovery/9", &recovery_token)
        .await
        .unwrap();
    assert_eq!(resumed.holder, "recovery/9");
    assert_eq!(resumed.fencing_token.as_ref(), Some(&recovery_token));

    assert!(refused(
        &store
            .advance_operation("j2", &journal, Step::Cancelled, StepStatus::Succeeded, None)
            .await
    ));
    assert!(refused(&store.finish_operation("j2", &journal, None).await));
    // The same journal without its token is not let through either: the
    // operation is now someone else's.
    let unfenced = OperationJournal {
        fencing_token: None,
        ..journal.clone()
    };
    assert!(matches!(
        store.finish_operation("j2", &unfenced, None).await,
        Err(Error::Journal { .. })
    ));
    let snap = store.get("j2").await.unwrap().unwrap();
    let active = snap.state.active_operation.as_ref().expect("still active");
    assert_eq!(active.steps.len(), 1, "the former holder wrote no step");
    assert_eq!(active.holder, "recovery/9");

    store
        .advance_operation("j2", &resumed, Step::Cancelled, StepStatus::Succeeded, None)
        .await
        .unwrap();
    assert!(store.finish_operation("j2", &resumed, None).await.unwrap());
}

async fn concurrent_writers_lose_no_update(backend: Arc<dyn StateBackend>) {
    let config = StoreConfig {
        max_iterations: 1_000,
        max_attempts: 200,
        ..StoreConfig::default()
    };
    let store = StateStore::with_config(backend, config);
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    store.increment_iteration("hot").await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let snap = store.get("hot").await.unwrap().unwrap();
    assert_eq!(snap.state.iteration, 40);
}

/// Issue 15: the sensor's durable dedupe. One delivery recorded by eight
/// replicas at once is recorded once; a store built later (a restarted
/// sensor) still recognises it; nothing is written for a duplicate.
async fn a_delivery_is_recorded_once_across_writers_and_restarts(backend: Arc<dyn StateBackend>) {
    let push = Supersession {
        head_sha: "2222222222222222222222222222222222222222".into(),
        pushed_at: Timestamp::from_second(1_800_000_000).unwrap(),
        delivery_id: "guid-1".into(),
        correlation_id: Some("guid-1".into()),
    };
    let store = StateStore::new(backend.clone());
    let recorders: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let push = push.clone();
            tokio::spawn(async move {
                store
                    .record_delivery("d1", "guid-1:7", Some(&push))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for r in recorders {
        outcomes.push(r.await.unwrap());
    }
    let recorded: Vec<_> = outcomes.iter().filter(|o| !o.is_duplicate()).collect();
    assert_eq!(
        recorded,
        [&DeliveryRecorded::Recorded { head_changed: true }],
        "{outcomes:?}"
    );
    let after = store.get("d1").await.unwrap().unwrap();
    assert_eq!(after.state.recent_deliveries, ["guid-1:7"]);
    assert_eq!(
        after.state.pending_supersessions,
        std::slice::from_ref(&push)
    );

    let restarted = StateStore::new(backend);
    assert_eq!(
        restarted
            .record_delivery("d1", "guid-1:7", Some(&push))
            .await
            .unwrap(),
        DeliveryRecorded::Duplicate
    );
    let unchanged = restarted.get("d1").await.unwrap().unwrap();
    assert_eq!(unchanged.resource_version, after.resource_version);
    assert!(matches!(
        restarted.record_delivery("d1", "a key", None).await,
        Err(Error::Invalid { .. })
    ));

    // What a new delivery names goes in with it, in its one write; a
    // duplicate applies nothing.
    let note = |value: &'static str| {
        move |s: &mut state_store::RemediationState, _: DeliveryRecorded| {
            s.metadata.insert("pull-request".into(), value.into());
        }
    };
    assert_eq!(
        restarted
            .record_delivery_with("d1", "guid-2:7", None, note("acme/widgets#7"))
            .await
            .unwrap(),
        DeliveryRecorded::Recorded {
            head_changed: false
        }
    );
    let noted = restarted.get("d1").await.unwrap().unwrap();
    assert_eq!(
        noted.state.metadata.get("pull-request").map(String::as_str),
        Some("acme/widgets#7")
    );
    assert_eq!(noted.state.recent_deliveries, ["guid-1:7", "guid-2:7"]);
    assert_eq!(
        restarted
            .record_delivery_with("d1", "guid-2:7", None, note("acme/other#1"))
            .await
            .unwrap(),
        DeliveryRecorded::Duplicate
    );
    let kept = restarted.get("d1").await.unwrap().unwrap();
    assert_eq!(kept.resource_version, noted.resource_version);
    assert_eq!(
        kept.state.metadata.get("pull-request").map(String::as_str),
        Some("acme/widgets#7")
    );
}

/// The value of an unlabelled counter, read through the Prometheus registry.
fn metric(store: &StateStore, name: &str) -> u64 {
    let mut registry = prometheus_client::registry::Registry::default();
    store.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Both backends.
// ---------------------------------------------------------------------------

async fn fake_kube() -> (FakeKube, Arc<dyn StateBackend>) {
    let kube = FakeKube::start().await.unwrap();
    let backend = ConfigMapBackend::new(kube.client(), "default");
    (kube, Arc::new(backend))
}

macro_rules! on_both_backends {
    ($($check:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
                    super::$check(backend).await;
                }
            )*
        }
        mod configmap {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let (_kube, backend) = fake_kube().await;
                    super::$check(backend).await;
                }
            )*
        }
    };
}

on_both_backends!(
    created_document_reads_back_exactly,
    creating_an_existing_document_is_already_exists,
    replace_with_the_read_version_succeeds_and_moves_the_version,
    replace_with_a_stale_version_conflicts_and_changes_nothing,
    replace_of_a_missing_document_is_not_found,
    delete_is_conditional_on_the_version,
    list_selects_by_every_label,
    store_update_and_operations_round_trip,
    store_compresses_large_states_and_reads_them_back,
    store_quarantines_a_corrupt_payload_and_rebuilds,
    store_never_overwrites_valid_json_it_cannot_decode,
    store_writes_keep_foreign_metadata,
    states_are_listed_page_by_page_each_once,
    writes_on_a_held_state_chain_and_lose_nothing,
    a_state_above_a_lowered_maximum_is_capped_stopped_and_the_repair_recorded,
    duplicate_feedback_is_repaired_to_the_newest_of_each_not_refused,
    store_journal_and_fencing_round_trip,
    a_paused_holder_cannot_advance_or_finish_a_resumed_operation,
    concurrent_writers_lose_no_update,
    a_delivery_is_recorded_once_across_writers_and_restarts,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncontended_update_costs_two_api_calls() {
    let kube = FakeKube::start().await.unwrap();
    let mut config = kube.config();
    config.default_retry = false;
    let client = kube::Client::try_from(config).unwrap();
    let store = StateStore::new(ConfigMapBackend::new(client, "default"));
    kube.calls().reset();
    store.increment_iteration("solo").await.unwrap(); // GET (404) + POST
    assert_eq!(kube.calls().count(None, Some("configmaps")), 2);
    for _ in 0..4 {
        store.increment_iteration("solo").await.unwrap(); // GET + PUT
    }
    assert_eq!(kube.calls().count(Some("get"), Some("configmaps")), 5);
    assert_eq!(kube.calls().count(Some("create"), Some("configmaps")), 1);
    assert_eq!(kube.calls().count(Some("update"), Some("configmaps")), 4);
    assert_eq!(kube.calls().count(None, Some("configmaps")), 10);
    assert_eq!(
        kube.calls().count(Some("patch"), None),
        0,
        "never server-side apply"
    );
}

/// Issue 12, item 8: a controller made a state's ConfigMap a dependent of
/// its owner (ownerReferences), holds it with a finalizer, and labels and
/// annotates it. Before, every PUT sent a fresh `ObjectMeta`, dropping the
/// owner reference and the finalizer on the store's next write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_keeps_what_other_writers_set_on_the_config_map() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    use kube::api::{Api, PostParams};

    let kube = FakeKube::start().await.unwrap();
    let store = StateStore::new(ConfigMapBackend::new(kube.client(), "default"));
    store.increment_iteration("owned").await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(kube.client(), "default");
    // The owner exists (a dangling owner reference would get the dependent
    // garbage-collected, as on a real cluster).
    let mut owner_cm = ConfigMap::default();
    owner_cm.metadata.name = Some("owner".into());
    let owner_cm = api.create(&PostParams::default(), &owner_cm).await.unwrap();
    let mut cm = api.get("task-owned-state").await.unwrap();
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner_cm.metadata.uid.clone().unwrap(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    cm.metadata = ObjectMeta {
        owner_references: Some(vec![owner.clone()]),
        finalizers: Some(vec!["example.dev/keep".into()]),
        ..cm.metadata
    };
    cm.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("team".into(), "infra".into());
    api.replace("task-owned-state", &PostParams::default(), &cm)
        .await
        .unwrap();

    assert_eq!(store.increment_iteration("owned").await.unwrap(), 2);

    let after = api.get("task-owned-state").await.unwrap();
    assert_eq!(after.metadata.owner_references, Some(vec![owner]));
    assert_eq!(
        after.metadata.finalizers,
        Some(vec!["example.dev/keep".to_owned()])
    );
    assert_eq!(after.metadata.labels.unwrap()["team"], "infra");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_writes_on_a_held_state_costs_one_call_each() {
    let kube = FakeKube::start().await.unwrap();
    let mut config = kube.config();
    config.default_retry = false;
    let client = kube::Client::try_from(config).unwrap();
    let store = StateStore::new(ConfigMapBackend::new(client, "default"));
    kube.calls().reset();
    let mut known = store.get("solo").await.unwrap(); // GET (404)
    for i in 0..4 {
        store
            .update_on("solo", &mut known, None, |s| {
                s.iteration = i + 1;
                Ok::<_, Error>(())
            })
            .await
            .unwrap(); // POST, then PUT
    }
    let calls = kube.calls();
    assert_eq!(calls.count(Some("get"), Some("configmaps")), 1);
    assert_eq!(calls.count(Some("create"), Some("configmaps")), 1);
    assert_eq!(calls.count(Some("update"), Some("configmaps")), 3);
    assert_eq!(store.get("solo").await.unwrap().unwrap().state.iteration, 4);
}
