//! TTL cleanup with paused time: old idle states go, InProgress and recently
//! touched ones stay, and a state touched between the LIST and the DELETE stays.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use state_store::{
    Clock, Document, Error, MemoryBackend, OperationJournal, OperationKind, StateBackend,
    StateStore, StoreConfig, StoredDocument, TaskStatus, TtlPolicy, spawn_ttl_cleanup,
};
use tokio_util::sync::CancellationToken;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn start() -> Timestamp {
    "2026-03-01T00:00:00Z".parse().unwrap()
}

async fn set_status(store: &StateStore, task: &str, status: TaskStatus) {
    store
        .update(task, |s| {
            s.status = status;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
}

async fn exists(store: &StateStore, task: &str) -> bool {
    store.get(task).await.unwrap().is_some()
}

fn cleanup_deletions(store: &StateStore) -> u64 {
    let mut registry = prometheus_client::registry::Registry::default();
    store.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix("state_store_cleanup_deletions_total ")?
                .parse()
                .ok()
        })
        .unwrap()
}

/// Lets the spawned cleanup task run its pass at the current instant.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn old_idle_states_are_removed_and_in_progress_or_recent_ones_kept() {
    let store = StateStore::with_clock(
        MemoryBackend::new(),
        StoreConfig::default(),
        Clock::tokio_anchored(start()),
    );
    set_status(&store, "done", TaskStatus::Completed).await;
    set_status(&store, "failed", TaskStatus::Failed).await;
    set_status(&store, "working", TaskStatus::InProgress).await;
    tokio::time::advance(8 * DAY).await;
    set_status(&store, "fresh", TaskStatus::Completed).await;

    let cancel = CancellationToken::new();
    let cleanup = spawn_ttl_cleanup(store.clone(), TtlPolicy::default(), cancel.clone());
    settle().await; // the first pass runs at once

    assert!(!exists(&store, "done").await);
    assert!(!exists(&store, "failed").await);
    assert!(
        exists(&store, "working").await,
        "InProgress is never expired"
    );
    assert!(exists(&store, "fresh").await, "touched a moment ago");
    assert_eq!(cleanup_deletions(&store), 2);

    // 6 h passes until "fresh" is 7 days idle: removed by the pass after that.
    tokio::time::advance(7 * DAY - HOUR).await;
    settle().await;
    assert!(exists(&store, "fresh").await);
    tokio::time::advance(6 * HOUR).await;
    settle().await;
    assert!(!exists(&store, "fresh").await);
    assert!(exists(&store, "working").await);

    cancel.cancel();
    cleanup.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_state_with_an_operation_in_flight_is_kept_whatever_its_status() {
    let store = StateStore::with_clock(
        MemoryBackend::new(),
        StoreConfig::default(),
        Clock::tokio_anchored(start()),
    );
    // A cancellation began on a task that never reached InProgress, then its
    // worker died: the journal is what recovery needs to finish or roll back.
    let journal = OperationJournal::begin(
        "op-1",
        OperationKind::Cancellation,
        "pod-a/1",
        store.clock().now(),
    );
    store.begin_operation("orphaned", journal).await.unwrap();
    set_status(&store, "done", TaskStatus::Completed).await;
    tokio::time::advance(30 * DAY).await;

    let report = store
        .cleanup_expired(TtlPolicy::default().ttl)
        .await
        .unwrap();
    assert_eq!(report.deleted, 1);
    assert_eq!(report.kept_in_progress, 1);
    let kept = store.get("orphaned").await.unwrap().unwrap();
    assert_eq!(kept.state.status, TaskStatus::Initialized);
    assert!(kept.state.active_operation.is_some());
    assert!(!exists(&store, "done").await);
}

#[tokio::test(start_paused = true)]
async fn cleanup_runs_once_per_interval() {
    let store = StateStore::with_clock(
        MemoryBackend::new(),
        StoreConfig::default(),
        Clock::tokio_anchored(start()),
    );
    let cancel = CancellationToken::new();
    let policy = TtlPolicy {
        interval: HOUR,
        ttl: DAY,
    };
    let cleanup = spawn_ttl_cleanup(store.clone(), policy, cancel.clone());
    set_status(&store, "a", TaskStatus::Completed).await;
    settle().await;
    tokio::time::advance(DAY - Duration::from_secs(1)).await;
    settle().await;
    assert!(
        exists(&store, "a").await,
        "not yet a day old at the last pass"
    );
    tokio::time::advance(HOUR).await;
    settle().await;
    assert!(!exists(&store, "a").await);
    cancel.cancel();
    cleanup.await.unwrap();
}

/// A backend that writes to the `touched` document right after answering a
/// read of it, as a concurrent writer would between the cleanup's read of a
/// candidate and its DELETE.
struct TouchAfterRead {
    inner: Arc<MemoryBackend>,
    armed: AtomicBool,
}

#[async_trait]
impl StateBackend for TouchAfterRead {
    async fn get(&self, name: &str) -> Result<Option<StoredDocument>, Error> {
        let read = self.inner.get(name).await?;
        if name == "task-touched-state" && self.armed.swap(false, Ordering::SeqCst) {
            let writer =
                StateStore::with_clock(self.inner.clone(), StoreConfig::default(), Clock::system());
            writer
                .update("touched", |s| {
                    s.metadata.insert("touched".into(), "yes".into());
                    Ok::<_, Error>(())
                })
                .await?;
        }
        Ok(read)
    }
    async fn create(&self, name: &str, document: Document) -> Result<StoredDocument, Error> {
        self.inner.create(name, document).await
    }
    async fn replace(
        &self,
        name: &str,
        resource_version: &str,
        document: Document,
    ) -> Result<StoredDocument, Error> {
        self.inner.replace(name, resource_version, document).await
    }
    async fn delete(&self, name: &str, resource_version: &str) -> Result<(), Error> {
        self.inner.delete(name, resource_version).await
    }
    async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<StoredDocument>, Error> {
        self.inner.list(labels).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_state_touched_between_its_read_and_its_delete_is_kept() {
    let memory = Arc::new(MemoryBackend::new());
    let backend = TouchAfterRead {
        inner: memory.clone(),
        armed: AtomicBool::new(false),
    };
    let store = StateStore::with_clock(
        backend,
        StoreConfig::default(),
        Clock::tokio_anchored(start()),
    );
    set_status(&store, "touched", TaskStatus::Completed).await;
    set_status(&store, "untouched", TaskStatus::Completed).await;
    tokio::time::advance(30 * DAY).await;

    // Arm the concurrent write, then run one pass.
    let armed = StateStore::with_clock(
        TouchAfterRead {
            inner: memory.clone(),
            armed: AtomicBool::new(true),
        },
        StoreConfig::default(),
        Clock::tokio_anchored(start() + jiff::SignedDuration::from_hours(30 * 24)),
    );
    let report = armed
        .cleanup_expired(TtlPolicy::default().ttl)
        .await
        .unwrap();

    assert_eq!(report.deleted, 1);
    assert_eq!(report.kept_changed, 1);
    assert!(!exists(&store, "untouched").await);
    let kept = store.get("touched").await.unwrap().unwrap();
    assert_eq!(kept.state.metadata["touched"], "yes");
}

/// A backend whose LIST never answers.
struct ListHangs(MemoryBackend);

#[async_trait]
impl StateBackend for ListHangs {
    async fn get(&self, name: &str) -> Result<Option<StoredDocument>, Error> {
        self.0.get(name).await
    }
    async fn create(&self, name: &str, document: Document) -> Result<StoredDocument, Error> {
        self.0.create(name, document).await
    }
    async fn replace(
        &self,
        name: &str,
        resource_version: &str,
        document: Document,
    ) -> Result<StoredDocument, Error> {
        self.0.replace(name, resource_version, document).await
    }
    async fn delete(&self, name: &str, resource_version: &str) -> Result<(), Error> {
        self.0.delete(name, resource_version).await
    }
    async fn list(&self, _: &BTreeMap<String, String>) -> Result<Vec<StoredDocument>, Error> {
        std::future::pending().await
    }
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_cleanup_stops_a_pass_in_progress() {
    let store = StateStore::new(ListHangs(MemoryBackend::new()));
    let cancel = CancellationToken::new();
    let cleanup = spawn_ttl_cleanup(store, TtlPolicy::default(), cancel.clone());
    settle().await; // the first pass is now waiting on its LIST
    let started = tokio::time::Instant::now();
    cancel.cancel();
    cleanup.await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
}

/// Counts the calls a cleanup pass makes, by kind.
struct Counting {
    inner: MemoryBackend,
    gets: std::sync::atomic::AtomicUsize,
    lists: std::sync::atomic::AtomicUsize,
    metadata_pages: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl StateBackend for Counting {
    async fn get(&self, name: &str) -> Result<Option<StoredDocument>, Error> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(name).await
    }
    async fn create(&self, name: &str, document: Document) -> Result<StoredDocument, Error> {
        self.inner.create(name, document).await
    }
    async fn replace(
        &self,
        name: &str,
        resource_version: &str,
        document: Document,
    ) -> Result<StoredDocument, Error> {
        self.inner.replace(name, resource_version, document).await
    }
    async fn delete(&self, name: &str, resource_version: &str) -> Result<(), Error> {
        self.inner.delete(name, resource_version).await
    }
    async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<StoredDocument>, Error> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list(labels).await
    }
    async fn list_metadata(
        &self,
        labels: &BTreeMap<String, String>,
        limit: u32,
        continue_token: Option<String>,
    ) -> Result<state_store::MetadataPage, Error> {
        self.metadata_pages.fetch_add(1, Ordering::SeqCst);
        self.inner
            .list_metadata(labels, limit, continue_token)
            .await
    }
}

/// Issue 12, item 9: a pass lists metadata only, page by page, and reads
/// whole only the states its annotations call expired and idle. Before, it
/// listed every payload in one go and kept them all.
#[tokio::test(start_paused = true)]
async fn a_pass_lists_metadata_page_by_page_and_reads_only_candidates() {
    let backend = Arc::new(Counting {
        inner: MemoryBackend::new(),
        gets: Default::default(),
        lists: Default::default(),
        metadata_pages: Default::default(),
    });
    let store = StateStore::with_clock(
        backend.clone(),
        StoreConfig::default(),
        Clock::tokio_anchored(start()),
    );
    for i in 0..190 {
        set_status(&store, &format!("old-done-{i}"), TaskStatus::Completed).await;
    }
    for i in 0..10 {
        set_status(&store, &format!("old-working-{i}"), TaskStatus::InProgress).await;
    }
    tokio::time::advance(8 * DAY).await;
    for i in 0..1_000 {
        set_status(&store, &format!("recent-{i}"), TaskStatus::Completed).await;
    }
    let (gets_before, lists_before) = (
        backend.gets.load(Ordering::SeqCst),
        backend.lists.load(Ordering::SeqCst),
    );

    let report = store
        .cleanup_expired(TtlPolicy::default().ttl)
        .await
        .unwrap();

    assert_eq!(report.examined, 1_200);
    assert_eq!((report.deleted, report.kept_in_progress), (190, 10));
    assert_eq!(
        report.read, 190,
        "only the expired, idle ones are read whole"
    );
    assert_eq!(backend.gets.load(Ordering::SeqCst) - gets_before, 190);
    assert_eq!(
        backend.lists.load(Ordering::SeqCst) - lists_before,
        0,
        "no LIST of payloads"
    );
    assert_eq!(
        backend.metadata_pages.load(Ordering::SeqCst),
        3,
        "pages of 500"
    );
    assert_eq!(backend.inner.len(), 1_010);
}

/// A state written before the annotations were mirrored (none on it) is
/// read whole and judged on the state itself.
#[tokio::test(start_paused = true)]
async fn a_state_without_mirrored_annotations_is_judged_on_the_state_itself() {
    let memory = Arc::new(MemoryBackend::new());
    let store = StateStore::with_clock(
        memory.clone(),
        StoreConfig::default(),
        Clock::tokio_anchored(start()),
    );
    set_status(&store, "legacy-done", TaskStatus::Completed).await;
    set_status(&store, "legacy-working", TaskStatus::InProgress).await;
    for name in ["task-legacy-done-state", "task-legacy-working-state"] {
        let read = memory.get(name).await.unwrap().unwrap();
        let mut document = read.document;
        document
            .annotations
            .retain(|k, _| k == "supersede.dev/schema-version");
        memory
            .replace(name, &read.resource_version, document)
            .await
            .unwrap();
    }
    tokio::time::advance(8 * DAY).await;

    let report = store
        .cleanup_expired(TtlPolicy::default().ttl)
        .await
        .unwrap();

    assert_eq!(
        (report.read, report.deleted, report.kept_in_progress),
        (2, 1, 1)
    );
    assert!(!exists(&store, "legacy-done").await);
    assert!(exists(&store, "legacy-working").await);
}

/// Issue 21, item 5: a state past its TTL that this build cannot read, or
/// may not write (a newer schema), is never deleted silently: it is kept,
/// counted by reason and named in a WARN, for an operator to decide.
#[tokio::test(start_paused = true)]
async fn unreadable_or_newer_states_past_their_ttl_are_kept_and_reported_by_reason() {
    let backend = Arc::new(MemoryBackend::new());
    let store = StateStore::with_clock(
        backend.clone(),
        StoreConfig::default(),
        Clock::tokio_anchored(start()),
    );
    let document = |task: &str, payload: &str| {
        let mut d = Document {
            labels: state_store::naming::state_labels(task),
            ..Document::default()
        };
        d.data
            .insert(state_store::naming::KEY_STATE.into(), payload.into());
        d
    };
    backend
        .create(
            "task-garbled-state",
            document("garbled", "{\"version\":\"v1\",\"task_"),
        )
        .await
        .unwrap();
    let old = (start() - jiff::SignedDuration::from_hours(24 * 30)).to_string();
    backend
        .create(
            "task-future-state",
            document(
                "future",
                &format!(r#"{{"version":"v9","task_id":"future","last_update":"{old}"}}"#),
            ),
        )
        .await
        .unwrap();
    set_status(&store, "done", TaskStatus::Completed).await;
    tokio::time::advance(8 * DAY).await;

    let report = store
        .cleanup_expired(TtlPolicy::default().ttl)
        .await
        .unwrap();

    assert_eq!(report.deleted, 1, "{report:?}");
    assert_eq!(report.kept_unowned, 2, "{report:?}");
    assert!(backend.get("task-garbled-state").await.unwrap().is_some());
    assert!(backend.get("task-future-state").await.unwrap().is_some());
    let mut registry = prometheus_client::registry::Registry::default();
    store.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for reason in ["unreadable", "newer_version"] {
        let series = format!("state_store_cleanup_skips_total{{reason=\"{reason}\"}} 1");
        assert!(text.contains(&series), "{series} in\n{text}");
    }
}
